using System.Net;
using System.Net.Sockets;
using System.Text;
using PtHost.Transports.Jet;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// spec/jet.md §6: a real browser (Debian's headless chromium) opens
/// <c>ws://…/jet/connect/&lt;aid&gt;/&lt;cid&gt;</c> from a page the test serves, exchanges binary
/// bytes with an acceptor, and writes what it received into the page; the test reads the DOM.
/// </summary>
[Collection("process")]
public class JetBrowserTests(ITestOutputHelper output)
{
    private static string Chromium => File.Exists("/usr/bin/chromium") ? "/usr/bin/chromium"
        : throw new InvalidOperationException("chromium is missing: run the README's test command (bash test.sh), which installs it");

    [Fact]
    public async Task Headless_chromium_connects_over_WebSocket_and_exchanges_bytes_with_an_acceptor()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["ws"];
        using var acceptor = await JetWebSockets.ConnectAsync(url, JetMethod.Accept, aid, cid);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");

        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        string page = $$"""
            <!DOCTYPE html><html><body><div id="result">pending</div><script>
            const ws = new WebSocket("ws://{{url.Authority}}/jet/connect/{{aid}}/{{cid}}");
            ws.binaryType = "arraybuffer";
            const got = [];
            ws.onopen = () => ws.send(new Uint8Array([104, 101, 108, 108, 111, 0, 255, 128]));
            ws.onmessage = (e) => {
              for (const b of new Uint8Array(e.data)) got.push(b);
              if (got.length >= 6) {
                document.getElementById("result").textContent = "RESULT " + got.map(b => b.toString(16).padStart(2, "0")).join("");
                ws.send(new Uint8Array([1]));
              }
            };
            ws.onerror = () => { document.getElementById("result").textContent = "ERROR"; fetch("/release"); };
            </script><img src="/hold"></body></html>
            """;
        await using var site = new PageServer(page, release.Task);

        var exchange = Task.Run(async () =>
        {
            try
            {
                byte[] hello = await JetWebSockets.ReceiveAsync(acceptor, 8);
                Assert.Equal(new byte[] { 104, 101, 108, 108, 111, 0, 255, 128 }, hello);
                await JetWebSockets.SendAsync(acceptor, [0xde, 0xad, 0xbe, 0xef, 0x00, 0x7f]);
                Assert.Equal(new byte[] { 1 }, await JetWebSockets.ReceiveAsync(acceptor, 1)); // the page wrote its result
            }
            finally { release.TrySetResult(); }
        });

        string profile = Directory.CreateTempSubdirectory("pthost-chromium-").FullName;
        try
        {
            var (exit, dom, err) = await PtProcess.RunAsync("/usr/bin/timeout", "90", Chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", $"--user-data-dir={profile}",
                "--dump-dom", $"http://127.0.0.1:{site.Port}/");
            output.WriteLine(dom);
            Assert.True(exit == 0, $"chromium exit {exit}: {err}");
            await exchange;
            Assert.Contains("RESULT deadbeef007f", dom, StringComparison.Ordinal);
        }
        finally
        {
            try { Directory.Delete(profile, true); } catch (IOException) { }
        }
    }

    /// <summary>Serves the page at <c>/</c>; <c>/hold</c> answers only once the exchange is over, so the page's load event (and --dump-dom) waits for it.</summary>
    private sealed class PageServer : IAsyncDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _cts = new();
        private readonly Task _loop;

        public PageServer(string page, Task released)
        {
            _listener.Start();
            _loop = Task.Run(async () =>
            {
                while (!_cts.IsCancellationRequested)
                {
                    TcpClient client;
                    try { client = await _listener.AcceptTcpClientAsync(_cts.Token); }
                    catch (Exception) { return; }
                    _ = Task.Run(async () =>
                    {
                        using var c = client;
                        try
                        {
                            var stream = c.GetStream();
                            var reader = new StreamReader(stream, Encoding.ASCII);
                            string? first = await reader.ReadLineAsync(_cts.Token);
                            while (!string.IsNullOrEmpty(await reader.ReadLineAsync(_cts.Token))) { }
                            string path = first?.Split(' ')[1] ?? "/";
                            string body = path switch { "/" => page, _ => "" };
                            if (path == "/hold") await released.WaitAsync(TimeSpan.FromSeconds(60), _cts.Token);
                            string type = path == "/" ? "text/html" : "text/plain";
                            byte[] bytes = Encoding.UTF8.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: {type}\r\nContent-Length: {Encoding.UTF8.GetByteCount(body)}\r\nConnection: close\r\n\r\n{body}");
                            await stream.WriteAsync(bytes, _cts.Token);
                        }
                        catch (Exception) { }
                    });
                }
            });
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public async ValueTask DisposeAsync()
        {
            _cts.Cancel();
            _listener.Stop();
            await _loop;
        }
    }
}
