using System.Net;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>
/// spec/ipc.md §7 "Errors": a session whose far side fails ends with an error at the near side,
/// over every kind of transport stream — a TCP reset from the target reaches the SOCKS client as
/// a reset, never as a clean end of stream after which it would take a cut-off transfer for a
/// whole one. Over plain that is a TCP reset all the way; over rud a RESET_STREAM; over asport a
/// QUIC RESET_STREAM between the relay and the server process.
/// </summary>
[Collection("process")]
public sealed class AbortPropagationTests
{
    /// <summary>
    /// Accepts connections, writes <paramref name="bytes"/> to each, and resets it (SO_LINGER 0) once the SOCKS
    /// client has them (<see cref="Delivered"/>): a transfer under way, not one that never started.
    /// </summary>
    private sealed class ResettingServer : IAsyncDisposable
    {
        private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        private readonly CancellationTokenSource _stop = new();
        private readonly SemaphoreSlim _delivered = new(0);
        private readonly Task _loop;
        public int Resets;

        /// <summary>The SOCKS client has read a connection's bytes: that connection is reset now.</summary>
        public void Delivered() => _delivered.Release();

        public int Bytes { get; }

        public ResettingServer(int bytes)
        {
            Bytes = bytes;
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(16);
            _loop = Task.Run(async () =>
            {
                var data = new byte[bytes];
                new Random(7).NextBytes(data);
                while (!_stop.IsCancellationRequested)
                {
                    Socket s;
                    try { s = await _listener.AcceptAsync(_stop.Token); }
                    catch (Exception) { return; }
                    try
                    {
                        await s.SendAsync(data);
                        // Bounded: a client that never gets the bytes sees the reset 30 s later (and the test says why it failed).
                        await _delivered.WaitAsync(TimeSpan.FromSeconds(30), _stop.Token);
                        s.LingerState = new LingerOption(true, 0);
                        Interlocked.Increment(ref Resets);
                    }
                    catch (Exception e) when (e is SocketException or OperationCanceledException) { }
                    finally { s.Dispose(); }
                }
            });
        }

        public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            _listener.Dispose();
            await _loop.WaitAsync(TimeSpan.FromSeconds(10));
        }
    }

    private static async Task<(long Bytes, Exception? Error)> ReadUntilEndAsync(PtChain chain, ResettingServer target)
    {
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, target.Port)]);
        Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(0, await socks.ReadReplyAsync());
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var buf = new byte[65536];
        long total = 0;
        bool delivered = false;
        try
        {
            int n;
            while ((n = await socks.Stream.ReadAsync(buf, cts.Token)) > 0)
            {
                total += n;
                if (total >= target.Bytes && !delivered) { delivered = true; target.Delivered(); }
            }
            return (total, null);
        }
        catch (IOException e) { return (total, e); }
        finally { if (!delivered) target.Delivered(); } // ended early: the server need not wait any longer
    }

    private static void AssertReset((long Bytes, Exception? Error) r, string transport)
    {
        Assert.True(r.Error is not null, $"{transport}: the SOCKS client saw a clean end of stream after {r.Bytes} bytes, not a reset");
        Assert.True(r.Error!.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionReset },
            $"{transport}: expected a connection reset, got {r.Error}");
    }

    [Theory]
    [InlineData("plain")]
    [InlineData("rud")]
    [InlineData("asport")]
    public async Task A_target_reset_reaches_the_socks_client_as_a_reset(string transport)
    {
        await using var target = new ResettingServer(256 * 1024);
        await using var relay = transport == "asport" ? await AsportRelayProcess.StartAsync() : null;
        await using var chain = transport switch
        {
            "plain" => await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() })),
            "rud" => await RudChain.StartAsync(),
            _ => await AsportTransportTests.StartChainAsync(relay!.EndPoint, $"127.0.0.1:{target.Port}"),
        };
        AssertReset(await ReadUntilEndAsync(chain, target), transport);
        // The hosts go on serving: a second session is reset the same way, not refused.
        AssertReset(await ReadUntilEndAsync(chain, target), transport);
        Assert.Equal(2, target.Resets);
    }
}
