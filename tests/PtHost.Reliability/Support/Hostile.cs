using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Turn;
using Xunit.Abstractions;

namespace PtHost.Reliability.Support;

/// <summary>Slow and hostile connections: open them, and measure when the listener cuts each.</summary>
public static class Hostile
{
    /// <summary>Opens <paramref name="count"/> TCP connections to <paramref name="target"/> (at most 64 connecting at once) and sends <paramref name="first"/> on each.</summary>
    public static async Task<List<(Socket Socket, TimeSpan Started)>> OpenAsync(IPEndPoint target, int count, byte[] first, Stopwatch clock)
    {
        using var gate = new SemaphoreSlim(64);
        return [.. await Task.WhenAll(Enumerable.Range(0, count).Select(async _ =>
        {
            await gate.WaitAsync();
            try
            {
                var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                var started = clock.Elapsed;
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await s.ConnectAsync(target, cts.Token);
                if (first.Length > 0) await s.SendAsync(first, SocketFlags.None);
                return (s, started);
            }
            finally { gate.Release(); }
        }))];
    }

    /// <summary>What one attacking connection saw: whether the far end ended it, after how long, and the first bytes it got.</summary>
    public readonly record struct Cut(bool Ended, double HeldSeconds, byte[] Received);

    /// <summary>Reads each connection until the far end ends it (EOF or reset) or <paramref name="within"/> passes; disposes it.</summary>
    public static async Task<List<Cut>> AwaitCutsAsync(IEnumerable<(Socket Socket, TimeSpan Started)> attackers, Stopwatch clock, TimeSpan within)
    {
        return [.. await Task.WhenAll(attackers.Select(async a =>
        {
            using var cts = new CancellationTokenSource(within);
            var received = new MemoryStream();
            var buf = new byte[4096];
            bool ended;
            try
            {
                int n;
                while ((n = await a.Socket.ReceiveAsync(buf, SocketFlags.None, cts.Token)) > 0)
                    if (received.Length < 4096) received.Write(buf, 0, n);
                ended = true;
            }
            catch (OperationCanceledException) { ended = false; }
            catch (SocketException) { ended = true; }
            var held = (clock.Elapsed - a.Started).TotalSeconds;
            a.Socket.Dispose();
            return new Cut(ended, held, received.ToArray());
        }))];
    }

    /// <summary>Asserts every connection was cut, between <paramref name="min"/> and <paramref name="max"/> seconds; writes the range.</summary>
    public static string Check(List<Cut> cuts, double min, double max, string what, ITestOutputHelper output)
    {
        var held = cuts.Select(c => c.HeldSeconds).Order().ToList();
        string line = $"{cuts.Count} {what}: {cuts.Count(c => c.Ended)} cut, after {held[0]:F1}–{held[^1]:F1} s (median {held[held.Count / 2]:F1} s)";
        output.WriteLine(line);
        Assert.All(cuts, c => Assert.True(c.Ended, $"{what}: a connection was still open after {c.HeldSeconds:F0} s"));
        Assert.All(cuts, c => Assert.InRange(c.HeldSeconds, min, max));
        return line;
    }
}

/// <summary>A TURN client over UDP with the long-term credentials (spec/turn.md §3.3), for floods and quotas.</summary>
public sealed class UdpTurnClient : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly byte[] _key;
    private readonly string _user, _realm;
    private byte[] _nonce = [];

    /// <param name="local">The source address (default 127.0.0.1).</param>
    public UdpTurnClient(IPEndPoint server, string user, string realm, string password, IPAddress? local = null)
    {
        _socket.Bind(new IPEndPoint(local ?? IPAddress.Loopback, 0));
        _socket.Connect(server);
        _user = user;
        _realm = realm;
        _key = Stun.LongTermKey(user, realm, password);
    }

    public Socket Socket => _socket;

    /// <summary>Sends a request (signed once a nonce is known) and returns 0 for success or the error code; retransmits as RFC 5389 §7.2.1.</summary>
    public async Task<int> RequestAsync(int method, params (ushort Type, byte[] Value)[] attributes)
    {
        bool signed = _nonce.Length > 0;
        int code = await ExchangeAsync(Build(method, attributes, out var tid), tid);
        // The first request learns the nonce from its 401; a stale nonce gets a fresh one with 438.
        if ((code == 401 && !signed && _nonce.Length > 0) || code == 438) code = await ExchangeAsync(Build(method, attributes, out tid), tid);
        return code;
    }

    private byte[] Build(int method, (ushort Type, byte[] Value)[] attributes, out byte[] tid)
    {
        tid = System.Security.Cryptography.RandomNumberGenerator.GetBytes(12);
        var list = attributes.ToList();
        if (_nonce.Length > 0)
        {
            list.Add((StunAttribute.Username, System.Text.Encoding.UTF8.GetBytes(_user)));
            list.Add((StunAttribute.Realm, System.Text.Encoding.UTF8.GetBytes(_realm)));
            list.Add((StunAttribute.Nonce, _nonce));
        }
        return TransportParserFuzzTests.BuildStun(method, StunClass.Request, tid, list, _nonce.Length > 0 ? _key : null);
    }

    private async Task<int> ExchangeAsync(byte[] request, byte[] tid)
    {
        var buffer = new byte[2048];
        for (int attempt = 0; attempt < 8; attempt++)
        {
            await _socket.SendAsync(request, SocketFlags.None);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(4));
            try
            {
                while (true)
                {
                    int n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                    if (Stun.TryParse(buffer.AsSpan(0, n), out var m) != StunParseError.None || !m.TransactionId.SequenceEqual(tid)) continue;
                    if (m.TryGet(StunAttribute.Nonce, out var nonce)) _nonce = nonce.ToArray();
                    if (m.Class == StunClass.Success) return 0;
                    return m.TryGet(StunAttribute.ErrorCode, out var e) && e.Length >= 4 ? e[2] * 100 + e[3] : -1;
                }
            }
            catch (OperationCanceledException) { }
        }
        throw new TimeoutException("no answer from the TURN listener");
    }

    public static (ushort, byte[]) UInt32(ushort type, uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        return (type, b);
    }

    public Task<int> AllocateAsync() => RequestAsync(StunMethod.Allocate, UInt32(StunAttribute.RequestedTransport, 17u << 24));

    public Task<int> DeleteAsync() => RequestAsync(StunMethod.Refresh, UInt32(StunAttribute.Lifetime, 0));

    public void Dispose() => _socket.Dispose();
}
