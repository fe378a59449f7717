using System.Net;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>
/// spec/ipc.md §7, "Threads": a client or server process whose transports all declare their socket continuations short
/// and non-blocking runs them on the socket event threads; any other keeps the thread pool; the operator's value wins.
/// </summary>
[Collection("process")]
public class InlineCompletionsTests
{
    private const string InlineLine = "socket continuations run on the socket event threads";
    private const string Variable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";
    private static readonly byte[] Ping = "inline?"u8.ToArray();

    /// <summary>
    /// Both plain processes say they run continuations inline, and short sessions keep being served while one busy session
    /// (through splice(2), or the buffered copy with PTHOST_NO_SPLICE=1 in the client) moves 64 MiB and more. (The busy
    /// direction's own fair-share yield is proven without sockets by <c>RelayFairShareTests</c>: here a full socket
    /// buffer also sends it back to its event loop now and then.)
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_plain_chain_runs_continuations_inline_and_a_busy_session_does_not_hold_an_event_thread(bool splice)
    {
        await using var echo = new EchoServer();
        using var sink = new CountingSink();
        var env = splice ? null : new Dictionary<string, string> { ["PTHOST_NO_SPLICE"] = "1" };
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }),
            clientEnvironment: env);
        await chain.Client.WaitForStderrAsync(InlineLine);
        await chain.Server.WaitForStderrAsync(InlineLine);

        using var stop = new CancellationTokenSource();
        await using var bulk = await OpenAsync(chain.SocksEndPoint, sink.Port);
        var blast = BlastAsync(bulk, stop.Token);
        int sessions = 0;
        const long Busy = 64L << 20;
        // Short sessions, one after another, until the busy one has moved 64 MiB (16 fair shares of 4 MiB) and at least 20 were served.
        while (sessions < 20 || sink.Bytes < Busy)
        {
            await EchoSessionAsync(chain.SocksEndPoint, echo.Port);
            sessions++;
            Assert.False(blast.IsCompleted, "the busy session ended early");
        }
        await stop.CancelAsync();
        await blast;
        Assert.True(sink.Bytes >= Busy, $"the busy session moved {sink.Bytes} bytes");
        Assert.DoesNotContain("stdin line ignored", chain.Client.Stderr);
    }

    /// <summary>A transport that has not declared itself safe (rud) keeps the thread pool for the whole process.</summary>
    [Fact]
    public async Task A_rud_chain_keeps_the_thread_pool()
    {
        await using var echo = new EchoServer();
        var generated = await PtChain.GenerateConfigAsync("rud");
        var (client, server) = ((JObject)generated["client"]!, (JObject)generated["server"]!);
        var serverConfig = PtChain.FreeServerOf("rud", server);
        serverConfig["loglevel"] = "debug";
        await using var chain = await PtChain.StartAsync(serverConfig, ep =>
        {
            client["serverAddress"] = ep.ToString();
            var config = PtChain.ClientOf("rud", client);
            config["loglevel"] = "debug";
            return config;
        });
        await EchoSessionAsync(chain.SocksEndPoint, echo.Port);
        // The start-up line would come before any session's line on the same stream.
        await chain.Server.WaitForStderrAsync("rud: connection from");
        Assert.DoesNotContain(InlineLine, chain.Server.Stderr);
        Assert.DoesNotContain(InlineLine, chain.Client.Stderr);
    }

    /// <summary>An operator's own value of the variable wins, and the log names it.</summary>
    [Fact]
    public async Task The_operators_value_of_the_variable_wins()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }),
            clientEnvironment: new Dictionary<string, string> { [Variable] = "0" });
        await chain.Client.WaitForStderrAsync($"{Variable}=0 kept: set by the operator");
        await EchoSessionAsync(chain.SocksEndPoint, echo.Port);
        await chain.Server.WaitForStderrAsync(InlineLine);
        Assert.DoesNotContain(InlineLine, chain.Client.Stderr);
    }

    private static async Task<SocksClient> OpenAsync(IPEndPoint socksEndPoint, int port)
    {
        var socks = await SocksClient.ConnectAsync(socksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, port)]);
        Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(0, await socks.ReadReplyAsync());
        return socks;
    }

    private static async Task EchoSessionAsync(IPEndPoint socksEndPoint, int echoPort)
    {
        await using var socks = await OpenAsync(socksEndPoint, echoPort);
        await socks.SendAsync(Ping);
        Assert.Equal(Ping, await socks.ReadExactlyAsync(Ping.Length, TimeSpan.FromSeconds(30)));
    }

    /// <summary>Writes 64 KiB blocks as fast as the chain takes them, until stopped.</summary>
    private static async Task BlastAsync(SocksClient socks, CancellationToken stop)
    {
        var block = new byte[64 * 1024];
        try
        {
            while (true) await socks.Stream.WriteAsync(block, stop);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
    }

    /// <summary>A TCP server that reads and discards what one connection sends, counting it.</summary>
    private sealed class CountingSink : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly Task _loop;
        private long _bytes;

        public CountingSink()
        {
            _listener.Start();
            Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
            _loop = RunAsync();
        }

        public int Port { get; }

        public long Bytes => Interlocked.Read(ref _bytes);

        private async Task RunAsync()
        {
            try
            {
                using var socket = await _listener.AcceptSocketAsync();
                var buffer = new byte[256 * 1024];
                int n;
                while ((n = await socket.ReceiveAsync(buffer)) > 0) Interlocked.Add(ref _bytes, n);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }

        public void Dispose()
        {
            _listener.Stop();
            _loop.Wait(TimeSpan.FromSeconds(5));
        }
    }
}
