using System.Net;
using System.Net.Sockets;

namespace PtHost.Testing;

/// <summary>
/// A UDP relay between a RUD client and server that loses, duplicates, delays, reorders and
/// (on request) tampers with packets, from a seeded random source (netem is not available
/// here). The client is whoever last sent from an address other than the server's.
/// </summary>
public sealed class LossyUdpRelay : IAsyncDisposable
{
    private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly IPEndPoint _server;
    private readonly Random _random;
    private readonly PriorityQueue<(byte[] Data, bool ToServer), long> _queue = new();
    private readonly SemaphoreSlim _signal = new(0, int.MaxValue);
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _receive, _deliver;
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    private IPEndPoint? _client;
    private long _forwarded, _dropped, _duplicated, _tampered;

    public LossyUdpRelay(IPEndPoint server, int seed)
    {
        _server = server;
        _random = new Random(seed);
        _socket.ReceiveBufferSize = 8 << 20;
        _socket.SendBufferSize = 8 << 20;
        _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _receive = Task.Run(ReceiveAsync);
        _deliver = Task.Run(DeliverAsync);
    }

    public IPEndPoint EndPoint => (IPEndPoint)_socket.LocalEndPoint!;
    public double Loss { get; set; }
    public double Duplicate { get; set; }
    public TimeSpan Delay { get; set; }
    /// <summary>Datagrams longer than this are dropped (a path with a smaller MTU); 0: no limit.</summary>
    public int MaxDatagram { get; set; }
    public long TooBig => Interlocked.Read(ref _tooBig);
    private long _tooBig;
    /// <summary>Up to this much extra random delay per packet: packets overtake each other.</summary>
    public TimeSpan Jitter { get; set; }
    /// <summary>When set, decides per packet (data, toServer) whether to flip a byte in it.</summary>
    public Func<byte[], bool, bool>? Tamper { get; set; }
    /// <summary>Every packet the client sent, in order (kept when set).</summary>
    public List<byte[]>? FromClient { get; set; }
    /// <summary>Every packet the server sent, in order (kept when set).</summary>
    public List<byte[]>? FromServer { get; set; }

    public long Forwarded => Interlocked.Read(ref _forwarded);
    public long Dropped => Interlocked.Read(ref _dropped);
    public long Duplicated => Interlocked.Read(ref _duplicated);
    public long Tampered => Interlocked.Read(ref _tampered);

    /// <summary>A copy of <see cref="FromClient"/> taken under the relay's lock.</summary>
    public byte[][] ClientPackets()
    {
        lock (_queue) return FromClient is null ? [] : [.. FromClient];
    }

    /// <summary>A copy of <see cref="FromServer"/> taken under the relay's lock.</summary>
    public byte[][] ServerPackets()
    {
        lock (_queue) return FromServer is null ? [] : [.. FromServer];
    }

    /// <summary>Sends <paramref name="data"/> to the server as if the client had sent it again.</summary>
    public void Inject(byte[] data) => _socket.SendTo(data, _server);

    private async Task ReceiveAsync()
    {
        var buffer = new byte[2048];
        EndPoint any = new IPEndPoint(IPAddress.Any, 0);
        while (!_cts.IsCancellationRequested)
        {
            SocketReceiveFromResult r;
            try { r = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any, _cts.Token); }
            catch (OperationCanceledException) { return; }
            catch (ObjectDisposedException) { return; }
            catch (SocketException) { continue; }
            var from = (IPEndPoint)r.RemoteEndPoint;
            bool toServer = !from.Equals(_server);
            var data = buffer.AsSpan(0, r.ReceivedBytes).ToArray();
            lock (_queue)
            {
                if (toServer)
                {
                    _client = from;
                    FromClient?.Add(data);
                }
                else FromServer?.Add(data);
                if (MaxDatagram > 0 && data.Length > MaxDatagram) { _tooBig++; continue; }
                if (_random.NextDouble() < Loss) { _dropped++; continue; }
                int copies = _random.NextDouble() < Duplicate ? 2 : 1;
                if (copies == 2) _duplicated++;
                for (int i = 0; i < copies; i++)
                {
                    var copy = data;
                    if (Tamper is { } t && t(data, toServer))
                    {
                        copy = (byte[])data.Clone();
                        copy[_random.Next(copy.Length)] ^= (byte)(1 + _random.Next(255));
                        _tampered++;
                    }
                    long due = _clock.ElapsedTicks * 1_000_000 / System.Diagnostics.Stopwatch.Frequency
                        + (long)(Delay.TotalMicroseconds + _random.NextDouble() * Jitter.TotalMicroseconds);
                    _queue.Enqueue((copy, toServer), due);
                }
            }
            _signal.Release();
        }
    }

    private async Task DeliverAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            long wait = 50_000;
            while (true)
            {
                (byte[] Data, bool ToServer) item;
                IPEndPoint? to;
                lock (_queue)
                {
                    if (!_queue.TryPeek(out item, out long due)) break;
                    long now = _clock.ElapsedTicks * 1_000_000 / System.Diagnostics.Stopwatch.Frequency;
                    if (due > now) { wait = due - now; break; }
                    _queue.Dequeue();
                    to = item.ToServer ? _server : _client;
                }
                if (to is null) continue;
                try { _socket.SendTo(item.Data, to); Interlocked.Increment(ref _forwarded); }
                catch (SocketException) { }
                catch (ObjectDisposedException) { return; }
            }
            try { await _signal.WaitAsync(TimeSpan.FromMicroseconds(Math.Max(wait, 500)), _cts.Token); }
            catch (OperationCanceledException) { return; }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _socket.Dispose();
        await Task.WhenAll(_receive, _deliver);
        _signal.Dispose();
    }
}
