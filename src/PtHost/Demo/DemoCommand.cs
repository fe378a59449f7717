using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Hosting;

namespace PtHost.Demo;

/// <summary>
/// <c>pthost demo</c>: starts a server and a client pthost on loopback, carries their
/// CMESSAGE/SMESSAGE lines as an application would, fetches a file through the client's SOCKS5
/// port (and with curl when installed), checks its SHA-256 and shuts both down. Prints each step.
/// </summary>
public static class DemoCommand
{
    public static async Task<int> RunAsync(string[] args)
    {
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find the pthost executable");
        var body = new byte[1 << 20];
        new Random(20261122).NextBytes(body);
        string expected = Convert.ToHexStringLower(SHA256.HashData(body));
        using var web = new TcpListener(IPAddress.Loopback, 0);
        web.Start();
        int webPort = ((IPEndPoint)web.LocalEndpoint).Port;
        using var stop = new CancellationTokenSource();
        var webLoop = ServeHttpAsync(web, body, stop.Token);
        Say($"web server on 127.0.0.1:{webPort} serves /demo.bin (1 MiB, sha256 {expected[..16]}...)");

        var serverConfig = new JObject { ["role"] = "server", ["transports"] = new JArray("plain"), ["allow"] = new JArray("127.0.0.1"), ["exit-on-stdin-close"] = true };
        var clientConfig = new JObject { ["role"] = "client", ["transports"] = new JArray("plain"), ["options"] = new JObject { ["plain"] = new JObject { ["discover"] = true } }, ["exit-on-stdin-close"] = true };
        using var server = Spawn(self, serverConfig, "server");
        using var client = Spawn(self, clientConfig, "client");
        try
        {
            var socksPort = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            var learned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var pumps = Task.WhenAll(
                PumpAsync(server, "server", line => line.StartsWith("SMESSAGE ", StringComparison.Ordinal) ? client : null, _ => { }),
                PumpAsync(client, "client", line => line.StartsWith("CMESSAGE ", StringComparison.Ordinal) ? server : null, line =>
                {
                    if (line.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal)) socksPort.TrySetResult(line.Split(' ')[3]);
                }));
            string proxy = await socksPort.Task.WaitAsync(TimeSpan.FromSeconds(20)).ConfigureAwait(false);
            Say($"client's SOCKS5 front end: {proxy}");

            // The client learns the server's address from the SMESSAGE we relayed; give it a moment.
            var (status, got) = await FetchAsync(IPEndPoint.Parse(proxy), "localhost", webPort, TimeSpan.FromSeconds(20)).ConfigureAwait(false);
            string hash = Convert.ToHexStringLower(SHA256.HashData(got));
            bool ok = status.StartsWith("HTTP/1.1 200", StringComparison.Ordinal) && hash == expected;
            Say($"fetched http://localhost:{webPort}/demo.bin through SOCKS5 (domain name sent to the server): \"{status}\", {got.Length} bytes, sha256 {(hash == expected ? "matches" : "DIFFERS")}");

            if (File.Exists("/usr/bin/curl"))
            {
                // A private directory (random name, mode 0700): a predictable /tmp name could be a link planted to make
                // curl overwrite another file (spec/ipc.md §2.4).
                string directory = Directory.CreateTempSubdirectory("pthost-demo-").FullName;
                string file = Path.Combine(directory, "demo.bin");
                try
                {
                    var (exit, output) = await RunCurlAsync(proxy, webPort, file).ConfigureAwait(false);
                    string curlHash = File.Exists(file) ? Convert.ToHexStringLower(SHA256.HashData(await File.ReadAllBytesAsync(file).ConfigureAwait(false))) : "none";
                    Say($"curl --socks5-hostname {proxy} http://localhost:{webPort}/demo.bin -> exit {exit}, {output}, sha256 {(curlHash == expected ? "matches" : "DIFFERS")}");
                    ok &= exit == 0 && curlHash == expected;
                }
                finally { Directory.Delete(directory, true); }
            }
            else Say("curl is not installed; skipped the curl fetch (apt-get install curl)");

            server.StandardInput.Close();
            client.StandardInput.Close();
            await Task.WhenAll(server.WaitForExitAsync(), client.WaitForExitAsync()).WaitAsync(TimeSpan.FromSeconds(15)).ConfigureAwait(false);
            await pumps.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            Say($"stdin closed: server exited {server.ExitCode}, client exited {client.ExitCode}");
            ok &= server.ExitCode == 0 && client.ExitCode == 0;
            Say(ok ? "demo OK" : "demo FAILED");
            return ok ? ExitCodes.Ok : ExitCodes.Software;
        }
        catch (Exception e) when (e is TimeoutException or IOException or SocketException or InvalidDataException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            Say("demo FAILED: " + e.Message);
            return ExitCodes.Software;
        }
        finally
        {
            foreach (var p in new[] { server, client })
                if (!p.HasExited) p.Kill(true);
            stop.Cancel();
            web.Stop();
            await webLoop.ConfigureAwait(false);
        }
    }

    private static void Say(string text) => Console.Out.WriteLine("demo: " + text);

    private static System.Diagnostics.Process Spawn(string self, JObject config, string name)
    {
        string json = PtHost.Contract.StrictJson.Write(config);
        Say($"starting {name}: pthost '{json}'");
        var psi = new ProcessStartInfo(self) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(json);
        var p = System.Diagnostics.Process.Start(psi) ?? throw new IOException("cannot start " + self);
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"[{name} stderr] {e.Data}"); };
        p.BeginErrorReadLine();
        return p;
    }

    private static async Task PumpAsync(System.Diagnostics.Process from, string name, Func<string, System.Diagnostics.Process?> route, Action<string> seen)
    {
        while (await from.StandardOutput.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            Say($"{name} stdout: {line}");
            seen(line);
            if (route(line) is { } to)
            {
                try
                {
                    await to.StandardInput.WriteLineAsync(line).ConfigureAwait(false);
                    await to.StandardInput.FlushAsync().ConfigureAwait(false);
                    Say($"  relayed to the {(name == "server" ? "client" : "server")}'s stdin");
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
            }
        }
    }

    /// <summary>HTTP GET through SOCKS5 with a domain-name request (ATYP 3), retried until the client knows its server.</summary>
    private static async Task<(string Status, byte[] Body)> FetchAsync(IPEndPoint proxy, string host, int port, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await s.ConnectAsync(proxy).ConfigureAwait(false);
            await using var ns = new NetworkStream(s, ownsSocket: false);
            var name = Encoding.ASCII.GetBytes(host);
            var request = new byte[3 + 5 + name.Length + 2];
            request[0] = 5; request[1] = 1; request[2] = 0;                       // greeting: no authentication
            request[3] = 5; request[4] = 1; request[5] = 0; request[6] = 3;       // CONNECT, domain name
            request[7] = (byte)name.Length;
            name.CopyTo(request, 8);
            BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(8 + name.Length), (ushort)port);
            await ns.WriteAsync(request).ConfigureAwait(false);
            var reply = new byte[12];
            await ns.ReadExactlyAsync(reply).ConfigureAwait(false);
            if (reply[3] != 0)
            {
                if (DateTime.UtcNow > deadline) throw new TimeoutException($"SOCKS reply 0x{reply[3]:x2}");
                Say($"SOCKS reply 0x{reply[3]:x2} (server address not learned yet?); retrying");
                await Task.Delay(500).ConfigureAwait(false);
                continue;
            }
            Say("SOCKS5 CONNECT succeeded (reply 0x00)");
            await ns.WriteAsync(Encoding.ASCII.GetBytes($"GET /demo.bin HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n")).ConfigureAwait(false);
            var all = new MemoryStream();
            await ns.CopyToAsync(all).ConfigureAwait(false);
            var bytes = all.ToArray();
            int split = bytes.AsSpan().IndexOf("\r\n\r\n"u8);
            if (split < 0) throw new InvalidDataException("no HTTP header in the response");
            string status = Encoding.ASCII.GetString(bytes, 0, bytes.AsSpan().IndexOf("\r\n"u8));
            return (status, bytes[(split + 4)..]);
        }
    }

    private static async Task<(int, string)> RunCurlAsync(string proxy, int port, string file)
    {
        var psi = new ProcessStartInfo("/usr/bin/curl") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-sS", "--max-time", "30", "--socks5-hostname", proxy, $"http://localhost:{port}/demo.bin", "-o", file, "-w", "HTTP %{http_code}, %{size_download} bytes" })
            psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        string o = await p.StandardOutput.ReadToEndAsync().ConfigureAwait(false);
        string e = await p.StandardError.ReadToEndAsync().ConfigureAwait(false);
        await p.WaitForExitAsync().ConfigureAwait(false);
        return (p.ExitCode, (o + " " + e).Trim());
    }

    private static async Task ServeHttpAsync(TcpListener listener, byte[] body, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            Socket c;
            try { c = await listener.AcceptSocketAsync(ct).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
            _ = Task.Run(async () =>
            {
                using (c)
                await using (var s = new NetworkStream(c))
                {
                    try
                    {
                        var head = new MemoryStream();
                        var one = new byte[1];
                        while (head.Length < 8192 && !head.ToArray().AsSpan().EndsWith("\r\n\r\n"u8))
                        {
                            if (await s.ReadAsync(one, ct).ConfigureAwait(false) == 0) return;
                            head.WriteByte(one[0]);
                        }
                        await s.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"), ct).ConfigureAwait(false);
                        await s.WriteAsync(body, ct).ConfigureAwait(false);
                        c.Shutdown(SocketShutdown.Send);
                    }
                    catch (Exception e) when (e is IOException or SocketException or OperationCanceledException) { }
                }
            }, ct);
        }
    }
}
