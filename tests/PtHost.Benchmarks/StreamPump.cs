using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// An iperf3-like single stream inside the harness, for paths iperf3 cannot be pointed at (a
/// Zephyr bound pair): one thread sends 128 KiB blocks with blocking send(2), another receives
/// into a 256 KiB buffer; throughput = bytes received / (first send → end of stream seen).
/// The same code measures the direct loopback reference, so the ratio compares like with like.
/// </summary>
public static class StreamPump
{
    private const int SendBlock = 128 * 1024;
    private const int ReceiveBlock = 256 * 1024;

    /// <summary>Sends <paramref name="bytes"/> on <paramref name="sender"/>, half-closes, and reads <paramref name="receiver"/> to its end.</summary>
    public static async Task<(double Gbps, long Received, TimeSpan Elapsed)> RunAsync(Socket sender, Socket receiver, long bytes, TimeSpan timeout)
    {
        // No SendTimeout/ReceiveTimeout: with one set, .NET emulates blocking calls through epoll.
        // The overall timeout below disposes both sockets instead, which ends both calls.
        long received = 0;
        var start = Stopwatch.GetTimestamp();
        var rx = Task.Factory.StartNew(() =>
        {
            var buffer = new byte[ReceiveBlock];
            long n = 0;
            int k;
            while ((k = receiver.Receive(buffer)) > 0) n += k;
            return n;
        }, TaskCreationOptions.LongRunning);
        var tx = Task.Factory.StartNew(() =>
        {
            var block = new byte[SendBlock];
            Random.Shared.NextBytes(block);
            long left = bytes;
            while (left > 0)
            {
                int n = sender.Send(block, 0, (int)Math.Min(left, block.Length), SocketFlags.None);
                left -= n;
            }
            sender.Shutdown(SocketShutdown.Send);
        }, TaskCreationOptions.LongRunning);
        var all = Task.WhenAll(tx, rx);
        // The limit the caller gave, and 5 s for the ends: a stream still running then has hung.
        if (!await Eventually.CompletesWithinAsync(all, timeout + TimeSpan.FromSeconds(5)).ConfigureAwait(false))
        {
            sender.Dispose();
            receiver.Dispose();
            throw new TimeoutException($"stream of {bytes} bytes not done within {timeout.TotalSeconds:0} s");
        }
        await all.ConfigureAwait(false);
        var elapsed = Stopwatch.GetElapsedTime(start);
        received = rx.Result;
        if (received != bytes) throw new IOException($"received {received} of {bytes} bytes");
        return (received * 8 / elapsed.TotalSeconds / 1e9, received, elapsed);
    }

    // Only synchronous socket calls here: on Linux .NET switches a socket to non-blocking mode for
    // good at its first async operation and then emulates blocking calls through epoll, which
    // would add to the harness's cost per block.

    /// <summary>A connected pair of loopback TCP sockets (the direct reference).</summary>
    public static async Task<(Socket A, Socket B)> DirectPairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        return await ConnectThroughAsync(listener, (IPEndPoint)listener.LocalEndPoint!).ConfigureAwait(false);
    }

    /// <summary>Connects to <paramref name="via"/> (a forwarder to <paramref name="listener"/>) and accepts the far end.</summary>
    public static async Task<(Socket A, Socket B)> ConnectThroughAsync(Socket listener, IPEndPoint via)
    {
        var accept = Task.Factory.StartNew(listener.Accept, TaskCreationOptions.LongRunning);
        var a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            a.Connect(via);
            if (!await Eventually.CompletesWithinAsync(accept, TimeSpan.FromSeconds(10)).ConfigureAwait(false))
                throw new TimeoutException($"no connection arrived through {via} within 10 s");
            return (a, await accept.ConfigureAwait(false));
        }
        catch
        {
            a.Dispose();
            listener.Dispose(); // ends a pending Accept
            throw;
        }
    }

    /// <summary>
    /// Two connections to a Zephyr relay, each reading its 12-byte assignment and binding to the
    /// other (spec/zephyr.md §2, §3). Returns the bound pair.
    /// </summary>
    public static (Socket A, Socket B) ZephyrPair(IPEndPoint relay)
    {
        var (a, za) = ZephyrJoin(relay);
        try
        {
            var (b, zb) = ZephyrJoin(relay);
            try
            {
                a.Send(ZephyrMessage(zb));
                b.Send(ZephyrMessage(za));
                return (a, b);
            }
            catch
            {
                b.Dispose();
                throw;
            }
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    /// <summary>Connects to the relay and reads the assignment; returns the socket and its zid.</summary>
    public static (Socket Socket, uint Zid) ZephyrJoin(IPEndPoint relay)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            s.Connect(relay);
            var m = new byte[12];
            int got = 0;
            while (got < 12)
            {
                int n = s.Receive(m, got, 12 - got, SocketFlags.None);
                if (n == 0) throw new IOException($"the relay closed after {got} bytes of the assignment");
                got += n;
            }
            if (m[0] != 0x82 || m[1] != 0x96 || m[2] != 0x44 || m[3] != 0xa1) throw new IOException("the assignment has the wrong magic");
            return (s, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(m.AsSpan(8)));
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>The 12-byte bind request: magic 82 96 44 a1, length 4, zid (big-endian).</summary>
    public static byte[] ZephyrMessage(uint zid)
    {
        var m = new byte[12];
        m[0] = 0x82; m[1] = 0x96; m[2] = 0x44; m[3] = 0xa1;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(m.AsSpan(4), 4);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(m.AsSpan(8), zid);
        return m;
    }
}
