using System.Net;
using System.Net.Sockets;
using PtHost.Quic;

namespace PtHost.Testing;

/// <summary>
/// A flood of QUIC Initials, as an attacker who spoofs source addresses sends them (issue 24, the ASPORT
/// Initial flood): real client Initials, each with its own connection id (captured from connection attempts
/// towards a socket that never answers), replayed once each from many loopback source addresses
/// (127.0.0.2 and up). The flooder never continues a handshake; what the server sends back is read and counted.
/// </summary>
public sealed class QuicInitialFlood : IAsyncDisposable
{
    private readonly List<Socket> _sources = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _readers = [];
    private long _sent, _answers, _answerBytes;

    private QuicInitialFlood(int sources)
    {
        for (int i = 0; i < sources; i++)
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Bind(new IPEndPoint(new IPAddress([127, 0, (byte)(i / 250), (byte)(2 + i % 250)]), 0));
            _sources.Add(s);
            _readers.Add(Task.Run(() => DrainAsync(s)));
        }
    }

    public long Sent => Interlocked.Read(ref _sent);
    /// <summary>Datagrams (and their bytes) the server sent to the flood's addresses.</summary>
    public long Answers => Interlocked.Read(ref _answers);
    public long AnswerBytes => Interlocked.Read(ref _answerBytes);

    public static QuicInitialFlood Create(int sources) => new(sources);

    /// <summary><paramref name="count"/> distinct Initials of a client offering <paramref name="alpn"/>.</summary>
    public static async Task<List<byte[]>> CaptureAsync(int count, string alpn, TimeSpan within)
    {
        using var sink = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        sink.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        sink.ReceiveBufferSize = 16 << 20;
        var target = (IPEndPoint)sink.LocalEndPoint!;
        var initials = new List<byte[]>();
        var seen = new HashSet<string>();
        using var got = new SemaphoreSlim(0);
        using var stop = new CancellationTokenSource(within);
        var reader = Task.Run(async () =>
        {
            var buf = new byte[2048];
            while (!stop.IsCancellationRequested)
            {
                int n;
                try { n = await sink.ReceiveAsync(buf, SocketFlags.None, stop.Token); }
                catch (OperationCanceledException) { return; }
                // Long header, fixed bit, type Initial (RFC 9000 §17.2.2): 0b1100xxxx; DCID length at 5.
                if (n < 1200 || (buf[0] & 0xf0) != 0xc0) continue;
                lock (initials)
                    if (seen.Add(Convert.ToHexString(buf, 6, buf[5]))) initials.Add(buf.AsSpan(0, n).ToArray());
                    else continue;
                got.Release();
            }
        });
        await using var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var options = new QuicClientOptions { Verification = QuicPeerVerification.Pinned(new byte[32]), ApplicationProtocols = [alpn] };
        var attempts = new List<Task>();
        for (int captured = 0; captured < count;)
        {
            // Each attempt sends one Initial with a connection id of its own; wait for the batch before the next.
            int batch = Math.Min(64, count - captured);
            for (int i = 0; i < batch; i++)
                attempts.Add(endpoint.ConnectAsync(target, options, stop.Token).ContinueWith(t => _ = t.Exception, TaskScheduler.Default));
            for (int i = 0; i < batch; i++)
                if (!await got.WaitAsync(TimeSpan.FromSeconds(10), stop.Token)) throw new TimeoutException($"captured {captured} of {count} Initials");
                else captured++;
        }
        await stop.CancelAsync();
        await Task.WhenAll(attempts);
        await reader;
        return initials;
    }

    /// <summary>Sends <paramref name="initials"/> round robin over the sources, each Initial once, at about
    /// <paramref name="perSecond"/>, until <paramref name="ct"/> is cancelled or all are sent.</summary>
    public async Task RunAsync(IPEndPoint target, IReadOnlyList<byte[]> initials, int perSecond, CancellationToken ct)
    {
        var started = DateTime.UtcNow;
        for (int i = 0; i < initials.Count && !ct.IsCancellationRequested; i++)
        {
            try { _sources[i % _sources.Count].SendTo(initials[i], target); }
            catch (SocketException) { }
            long sent = Interlocked.Increment(ref _sent);
            var due = started + TimeSpan.FromSeconds((double)sent / perSecond);
            var wait = due - DateTime.UtcNow;
            if (wait > TimeSpan.FromMilliseconds(1))
            {
                try { await Task.Delay(wait, ct); }
                catch (OperationCanceledException) { return; }
            }
        }
    }

    private async Task DrainAsync(Socket s)
    {
        var buf = new byte[65536];
        while (!_stop.IsCancellationRequested)
        {
            int n;
            try { n = await s.ReceiveAsync(buf, SocketFlags.None, _stop.Token); }
            catch (SocketException) { continue; }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { return; }
            Interlocked.Increment(ref _answers);
            Interlocked.Add(ref _answerBytes, n);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await Task.WhenAll(_readers);
        foreach (var s in _sources) s.Dispose();
        _stop.Dispose();
    }
}
