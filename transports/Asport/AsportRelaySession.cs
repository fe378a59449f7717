using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Net;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>One authenticated client on the server: its bound TCP/UDP port and the commands
/// flowing over its QUIC connection (spec/asport.md §4.2–§4.4).</summary>
internal sealed class AsportRelaySession : IAsyncDisposable
{
    private sealed class Association(ushort id, IPEndPoint source)
    {
        public readonly ushort Id = id;
        public readonly IPEndPoint Source = source;
        public int NextPacketId;
        public long LastActive = Environment.TickCount64;
    }

    private readonly QuicConnection _conn;
    private readonly ClientHello _hello;
    private readonly AsportRelayOptions _options;
    private readonly ILogger _log;
    private readonly AsportRelay _server;
    private readonly Socket? _tcpSocket;
    private TcpSessionListener? _tcp;
    private readonly Socket? _udp;
    private readonly object _assocLock = new();
    private readonly Dictionary<IPEndPoint, Association> _bySource = [];
    private readonly Dictionary<ushort, Association> _byId = [];
    private int _nextAssoc = 1;
    private readonly AsportReassembly _reassembly;
    private readonly object _reassemblyLock = new();
    private readonly CancellationTokenSource _cts = new();
    // §5.1 forwarding bounds: TCP connections waiting for a stream, QUIC-mode packets waiting for one.
    private int _pendingTcp, _pendingPackets;

    public int Port { get; }

    private AsportRelaySession(QuicConnection conn, ClientHello hello, AsportRelayOptions options, int port, Socket? tcp, Socket? udp, ILogger log, AsportRelay server)
    {
        _conn = conn;
        _hello = hello;
        _options = options;
        Port = port;
        _tcpSocket = tcp;
        _udp = udp;
        _log = log;
        _server = server;
        _reassembly = new AsportReassembly(options.ReassemblyTimeout);
    }

    /// <summary>Binds the port for the requested mode; null when it is taken.</summary>
    public static AsportRelaySession? TryBind(QuicConnection conn, ClientHello hello, AsportRelayOptions o, int port, ILogger log, AsportRelay server)
    {
        Socket? tcp = null, udp = null;
        try
        {
            var ep = new IPEndPoint(o.BindAddress, port);
            if (AsportWire.ForwardsTcp(hello.Mode))
            {
                tcp = new Socket(ep.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                tcp.Bind(ep);
                tcp.Listen(512);
            }
            if (AsportWire.ForwardsUdp(hello.Mode))
            {
                udp = new Socket(ep.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
                udp.Bind(ep);
            }
            return new AsportRelaySession(conn, hello, o, port, tcp, udp, log, server);
        }
        catch (SocketException)
        {
            tcp?.Dispose();
            udp?.Dispose();
            return null;
        }
    }

    public async Task RunAsync(CancellationToken stop)
    {
        using var link = CancellationTokenSource.CreateLinkedTokenSource(stop, _cts.Token);
        var ct = link.Token;
        var tasks = new List<Task> { StreamLoopAsync(ct), DatagramLoopAsync(ct), SweepLoopAsync(ct) };
        if (_tcpSocket is not null)
        {
            // §4.2: every inbound TCP connection becomes one Connect stream (no limit of our own: the
            // client's stream credit is the limit).
            _tcp = new TcpSessionListener($"asport port {Port}", _tcpSocket, (s, _) => ForwardTcpAsync(s, ct), _log, int.MaxValue);
            _tcp.Start();
        }
        if (_udp is not null) tasks.Add(UdpReceiveLoopAsync(ct));
        await Task.WhenAny(_conn.Closed, Task.Delay(Timeout.Infinite, ct)).ConfigureAwait(false);
        _cts.Cancel();
        if (_tcp is not null) tasks.Add(_tcp.StopAsync(new CancellationToken(true)));
        _udp?.Dispose();
        try { await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
        catch (Exception e) when (e is OperationCanceledException or IOException or SocketException or ObjectDisposedException or TimeoutException) { }
    }

    // §4.2: one bidirectional stream per inbound TCP connection: Connect + source address, then raw bytes.
    private async Task ForwardTcpAsync(Socket socket, CancellationToken ct)
    {
        using var net = new NetworkStream(socket, ownsSocket: true);
        if (Interlocked.Increment(ref _pendingTcp) > _options.MaxPendingTcp)
        {
            // §5.1: beyond the bound a connection is reset at once instead of waiting for stream credit.
            Interlocked.Decrement(ref _pendingTcp);
            Interlocked.Increment(ref _server.TcpDropped);
            socket.LingerState = new LingerOption(true, 0);
            return;
        }
        try
        {
            socket.NoDelay = true;
            QuicStream stream;
            try { stream = await _conn.OpenBidirectionalStreamAsync(ct).ConfigureAwait(false); }
            finally { Interlocked.Decrement(ref _pendingTcp); }
            await using (stream.ConfigureAwait(false))
            {
                var header = new byte[AsportWire.HeaderSize + AsportWire.MaxAddressSize];
                var n = AsportWire.WriteConnect(header, Normalize((IPEndPoint)socket.RemoteEndPoint!));
                await stream.WriteAsync(header.AsMemory(0, n), ct).ConfigureAwait(false);
                Interlocked.Increment(ref _server.TcpForwarded);
                await Relay.RunAsync(net, stream, null, null, ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.ForwardEnded(Port, e.Message);
        }
    }

    // §4.3: UDP from the public port → Packet with the association id of the source.
    private async Task UdpReceiveLoopAsync(CancellationToken ct)
    {
        var buf = GC.AllocateUninitializedArray<byte>(AsportPackets.MaxPayload);
        var from = new SocketAddress(_udp!.AddressFamily);
        var overStreams = AsportWire.UdpOverStreams(_hello.Mode);
        while (!ct.IsCancellationRequested)
        {
            int n;
            try { n = await _udp.ReceiveFromAsync(buf, SocketFlags.None, from, ct).ConfigureAwait(false); }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.MessageSize) { continue; }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
            var source = Normalize((IPEndPoint)new IPEndPoint(IPAddress.Any, 0).Create(from));
            Association a;
            lock (_assocLock)
            {
                if (!_bySource.TryGetValue(source, out a!))
                {
                    if (_byId.Count >= 65535) continue;
                    ushort id;
                    do { id = (ushort)_nextAssoc; _nextAssoc = _nextAssoc == 65535 ? 1 : _nextAssoc + 1; } while (_byId.ContainsKey(id));
                    a = new Association(id, source);
                    _bySource[source] = a;
                    _byId[id] = a;
                }
                a.LastActive = Environment.TickCount64;
            }
            var pktId = (ushort)Interlocked.Increment(ref a.NextPacketId);
            Interlocked.Increment(ref _server.UdpForwarded);
            if (overStreams)
            {
                // §5.1: at most MaxPendingPackets packets wait for a unidirectional stream; the excess is dropped.
                if (Interlocked.Increment(ref _pendingPackets) > _options.MaxPendingPackets)
                {
                    Interlocked.Decrement(ref _pendingPackets);
                    Interlocked.Increment(ref _server.UdpDropped);
                    continue;
                }
                var copy = buf.AsSpan(0, n).ToArray();
                _ = AsportPackets.SendOverStreamAsync(_conn, a.Id, pktId, copy, source, ct).ContinueWith(t =>
                {
                    Interlocked.Decrement(ref _pendingPackets);
                    _ = t.Exception;
                }, TaskScheduler.Default);
            }
            else if (!AsportPackets.SendNative(_conn, a.Id, pktId, buf.AsSpan(0, n), source))
                _log.PacketNotSent(Port, n);
        }
    }

    // Commands on streams the client opens: Packet (QUIC mode), Dissociate, Heartbeat.
    private async Task StreamLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            QuicStream s;
            try { s = await _conn.AcceptStreamAsync(ct).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or IOException) { return; }
            if (!s.IsUnidirectional)
            {
                s.Abort(1); // the client opens no bidirectional streams (§4.2)
                continue;
            }
            _ = Task.Run(async () =>
            {
                await using (s.ConfigureAwait(false))
                {
                    (byte[] Buffer, int Length)? cmd;
                    try { cmd = await AsportPackets.ReadStreamCommandAsync(s, AsportPackets.MaxStreamCommand, ct).ConfigureAwait(false); }
                    catch (Exception e) when (e is IOException or OperationCanceledException) { return; }
                    if (cmd is not { } c) return;
                    try { OnCommand(c.Buffer.AsSpan(0, c.Length), fromStream: true); }
                    finally { ArrayPool<byte>.Shared.Return(c.Buffer); }
                }
            }, CancellationToken.None);
        }
    }

    private async Task DatagramLoopAsync(CancellationToken ct)
    {
        var buf = new byte[65536];
        while (!ct.IsCancellationRequested)
        {
            int n;
            try { n = await _conn.ReceiveDatagramAsync(buf, ct).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or IOException) { return; }
            OnCommand(buf.AsSpan(0, n), fromStream: false);
        }
    }

    /// <summary>One command from the client; anything malformed is counted and dropped (§4.4).</summary>
    private void OnCommand(ReadOnlySpan<byte> msg, bool fromStream)
    {
        if (!AsportWire.TryReadHeader(msg, out var cmd))
        {
            Malformed("bad header");
            return;
        }
        switch (cmd)
        {
            case AsportCommand.Heartbeat:
                return;
            case AsportCommand.Dissociate:
                if (msg.Length != 4) { Malformed("bad Dissociate"); return; }
                var id = System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(msg[2..]);
                lock (_assocLock)
                    if (_byId.Remove(id, out var gone)) _bySource.Remove(gone.Source);
                return;
            case AsportCommand.Packet:
                if (!AsportWire.ForwardsUdp(_hello.Mode)) { Malformed("Packet without UDP forwarding"); return; }
                if (!AsportWire.TryReadPacketHeader(msg[2..], out var h, out var used)) { Malformed("bad Packet header"); return; }
                var data = msg[(2 + used)..];
                byte[]? payload;
                int length;
                AsportReassembly.Result r;
                IPEndPoint? address;
                lock (_reassemblyLock) r = _reassembly.Offer(h, data, Environment.TickCount64, out payload, out length, out address);
                if (r == AsportReassembly.Result.Rejected) { Malformed("bad fragment"); return; }
                if (r == AsportReassembly.Result.Incomplete) return;
                try
                {
                    Association? a;
                    lock (_assocLock)
                    {
                        _byId.TryGetValue(h.AssocId, out a);
                        if (a is not null) a.LastActive = Environment.TickCount64;
                    }
                    if (a is null) { _log.UnknownAssociation(Port, h.AssocId); return; }
                    // §3.4 (the seed's rule): the address must be the association's source, else the Packet is dropped.
                    if (address is null || !Normalize(address).Equals(a.Source)) { Malformed("Packet address is not its association's source"); return; }
                    try { _udp!.SendTo(payload.AsSpan(0, length), SocketFlags.None, a.Source); }
                    catch (SocketException e) { _log.UdpSendFailed(Port, e.SocketErrorCode); }
                }
                finally { AsportReassembly.ReturnBuffer(payload!); }
                return;
            default:
                Malformed($"unexpected {cmd}");
                return;
        }
    }

    private long _malformed;

    private void Malformed(string what)
    {
        var n = Interlocked.Increment(ref _malformed);
        if (n <= 10) _log.Malformed(Port, _conn.RemoteEndPoint, what);
    }

    /// <summary>Associations idle longer than the timeout end with a Dissociate (§4.3).</summary>
    private async Task SweepLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(Math.Clamp(_options.AssociationTimeout.TotalSeconds / 4, 1, 10)));
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                List<ushort>? expired = null;
                var now = Environment.TickCount64;
                lock (_assocLock)
                {
                    foreach (var a in _byId.Values)
                        if (now - a.LastActive > (long)_options.AssociationTimeout.TotalMilliseconds) (expired ??= []).Add(a.Id);
                    if (expired is not null)
                        foreach (var id in expired)
                            if (_byId.Remove(id, out var a)) _bySource.Remove(a.Source);
                }
                lock (_reassemblyLock) _reassembly.Expire(now);
                if (expired is null) continue;
                foreach (var id in expired)
                {
                    var buf = new byte[4];
                    AsportWire.WriteDissociate(buf, id);
                    try
                    {
                        var s = await _conn.OpenUnidirectionalStreamAsync(ct).ConfigureAwait(false);
                        await s.WriteAsync(buf, ct).ConfigureAwait(false);
                        s.CompleteWrites();
                    }
                    catch (Exception e) when (e is IOException or OperationCanceledException) { return; }
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    private static IPEndPoint Normalize(IPEndPoint ep) =>
        ep.Address.IsIPv4MappedToIPv6 ? new IPEndPoint(ep.Address.MapToIPv4(), ep.Port) : ep;

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        if (_tcp is not null) await _tcp.DisposeAsync().ConfigureAwait(false);
        else _tcpSocket?.Dispose();
        _udp?.Dispose();
        _server.ReleasePort(Port);
        _cts.Dispose();
    }
}
