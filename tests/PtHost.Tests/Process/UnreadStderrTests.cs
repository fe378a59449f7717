using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// A parent that never reads pthost's stderr (spec/ipc.md §4.11): once the pipe and the log queue are full, log
/// lines are dropped and counted, and the sessions go on.
/// </summary>
[Collection("process")]
public sealed class UnreadStderrTests(ITestOutputHelper output)
{
    private const int Flood = 12_000;

    [Fact]
    public async Task A_server_whose_stderr_nobody_reads_keeps_serving_and_counts_the_lines_it_dropped()
    {
        await using var fifo = await HeldFifo.CreateAsync();
        var pipe = fifo.Stream;
        var config = PtChain.FreeServer(); // the default loglevel, info
        await using var server = fifo.StartPthost(2, config.ToString(Formatting.None));
        var lines = await server.ReadUntilDoneAsync();
        var serverEndPoint = IPEndPoint.Parse(lines.Single(l => l.StartsWith("SMETHOD plain ", StringComparison.Ordinal)).Split(' ')[2]);

        // Connections that send garbage: the server logs each at info ("not a session preamble"). 12,000 lines are
        // more than the pipe (64 KiB, some 600 lines) and the queue (10,000 lines) hold. Before the fix the server
        // stopped serving once both were full.
        byte[] garbage = new byte[64];
        garbage.AsSpan().Fill(0xff);
        int sent = 0;
        using (var flood = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            try
            {
                for (; sent < Flood; sent++)
                {
                    using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    await socket.ConnectAsync(serverEndPoint, flood.Token);
                    await socket.SendAsync(garbage, SocketFlags.None, flood.Token);
                }
            }
            catch (OperationCanceledException) { }
        }
        output.WriteLine($"{sent} garbage connections made");
        Assert.Equal(Flood, sent);

        // A real session through a client: the server still accepts, reads the preamble, dials and relays.
        await using var echo = new EchoServer();
        await using var client = PtProcess.StartPthost(PtChain.ClientWith(new Newtonsoft.Json.Linq.JObject { ["serverAddress"] = serverEndPoint.ToString() }).ToString(Formatting.None));
        var clientLines = await client.ReadUntilDoneAsync();
        var socks = IPEndPoint.Parse(clientLines.Single(l => l.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal)).Split(' ')[3]);
        await using (var session = await SocksClient.ConnectAsync(socks))
        {
            await session.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
            Assert.Equal(new byte[] { 5, 0 }, await session.ReadExactlyAsync(2));
            Assert.Equal(0x00, await session.ReadReplyAsync());
            byte[] data = RandomNumberGenerator.GetBytes(10_000);
            await session.SendAsync(data);
            Assert.Equal(data, await session.ReadExactlyAsync(data.Length));
        }
        Assert.False(server.HasExited);

        // Read the pipe now: the queued lines come out; once the queue has room, the next line logged (another
        // garbage connection) is preceded by the count of those dropped.
        var text = new StringBuilder();
        bool stop = false;
        var reader = Task.Run(async () =>
        {
            byte[] buffer = new byte[65536];
            while (!Volatile.Read(ref stop))
            {
                int n = await pipe.ReadAsync(buffer);
                lock (text) text.Append(Encoding.UTF8.GetString(buffer, 0, n));
            }
        });
        try
        {
            await Eventually.TrueAsync(async () =>
            {
                await GarbageAsync(serverEndPoint, garbage);
                lock (text) return text.ToString().Contains("message(s) dropped because of queue size limit", StringComparison.Ordinal);
            }, "the count of dropped log lines on stderr", TimeSpan.FromSeconds(30));
        }
        finally
        {
            // The reader waits in read(2) on the FIFO: one more byte through a handle of our own ends it.
            Volatile.Write(ref stop, true);
            await using (var nudge = new FileStream(fifo.Path, FileMode.Open, FileAccess.Write)) await nudge.WriteAsync("\n"u8.ToArray());
            Assert.True(await Eventually.CompletesWithinAsync(reader, TimeSpan.FromSeconds(10)), "the FIFO reader did not end");
        }
        lock (text) output.WriteLine($"{text.Length} bytes of stderr read after the session");
    }

    private static async Task GarbageAsync(IPEndPoint server, byte[] garbage)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await socket.ConnectAsync(server, limit.Token);
        await socket.SendAsync(garbage, SocketFlags.None, limit.Token);
    }
}
