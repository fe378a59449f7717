using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>Thrown when the server answered the ClientHello with an error code.</summary>
public sealed class AsportRejectedException(ServerHelloCode code) : IOException($"ASPORT server refused: {code}")
{
    public ServerHelloCode Code { get; } = code;
}

public sealed record AsportRelayClientOptions
{
    public required IPEndPoint Server { get; init; }
    public required QuicPeerVerification Verification { get; init; }
    public required Guid User { get; init; }
    public required string Password { get; init; }
    public ForwardMode Mode { get; init; } = ForwardMode.Tcp;
    public ushort PortStart { get; init; } = 1;
    public ushort PortEnd { get; init; } = 65535;
    /// <summary>Where forwarded TCP connections and UDP packets go (the service behind NAT).</summary>
    public required IPEndPoint LocalTarget { get; init; }
    public TimeSpan Heartbeat { get; init; } = TimeSpan.FromSeconds(3);
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(3);
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan UdpIdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
    public TimeSpan ReconnectMin { get; init; } = TimeSpan.FromMilliseconds(500);
    public TimeSpan ReconnectMax { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Bidirectional streams (forwarded TCP connections) the server may have open at once (§6.1).</summary>
    public int MaxForwardedStreams { get; init; } = AsportRelayClient.MaxForwardedStreams;
}

/// <summary>
/// The ASPORT client (spec/asport.md §4.5), the side behind NAT: keeps a QUIC connection to the
/// server, authenticates, sends a Heartbeat every 3 s, turns Connect streams into TCP
/// connections to the local target and Packets into UDP on one socket per association, and
/// reconnects with exponential back-off when the server goes away.
/// </summary>
public sealed class AsportRelayClient : IAsyncDisposable
{
    /// <summary>Bidirectional streams (forwarded TCP connections) the server may have open at once on our connection.</summary>
    public const int MaxForwardedStreams = 16384;

    /// <summary>One association: a socket towards LocalTarget, or (the transport) a handler's state.</summary>
    private sealed class Association(ushort id, Socket? socket, IPEndPoint? source, IAsportUdpAssociation? handler = null)
    {
        public readonly ushort Id = id;
        public readonly Socket? Socket = socket;
        public readonly IAsportUdpAssociation? Handler = handler;
        public readonly IPEndPoint? Source = source;
        public int NextPacketId;
        public long LastActive = Environment.TickCount64;

        public void End()
        {
            Socket?.Dispose();
            Handler?.End();
        }
    }

    private readonly AsportRelayClientOptions _options;
    private readonly ILogger _log;
    private readonly Func<IPEndPoint?, CancellationToken, ValueTask<Stream>> _openLocal;
    private readonly Func<QuicStream, IPEndPoint?, CancellationToken, Task>? _serveConnect;
    private readonly IAsportUdpHandler? _udp;
    private readonly CancellationTokenSource _stop = new();
    private Task? _run;
    private TaskCompletionSource<int> _registered = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public long Connections, TcpForwarded, UdpForwarded, Malformed;

    /// <summary>Registrations the server accepted, and new connections started after one was lost or failed (spec/asport.md §4.3).</summary>
    public long Registrations, Reconnects;

    /// <summary>1 while registered (a public port serves), else 0.</summary>
    public int IsRegistered;

    /// <summary>
    /// The forwarded TCP connections as sessions (spec/asport.md §4.4, metrics): opened once the local service
    /// answered, failed with reason <c>local-connect</c> when it did not; in = from the public side, out = from the local service.
    /// </summary>
    public TransportCounters Sessions { get; } = new();

    private Action<long>? _countIn, _countOut;

    /// <param name="openLocal">Opens the onward stream for a Connect (default: TCP to LocalTarget).</param>
    /// <param name="serveConnect">Serves a whole Connect stream after its header instead (the transport's sessions).</param>
    /// <param name="udp">Takes every association's packets instead of a UDP socket towards LocalTarget (the transport, spec/asport.md §6.2).</param>
    public AsportRelayClient(AsportRelayClientOptions options, ILogger log, Func<IPEndPoint?, CancellationToken, ValueTask<Stream>>? openLocal = null,
        Func<QuicStream, IPEndPoint?, CancellationToken, Task>? serveConnect = null, IAsportUdpHandler? udp = null)
    {
        _options = options;
        _log = log;
        _openLocal = openLocal ?? OpenTcpAsync;
        _serveConnect = serveConnect;
        _udp = udp;
    }

    /// <summary>The public port the server bound, once registered (reset on each reconnect).</summary>
    public Task<int> Registered => _registered.Task;

    /// <summary>Raised with the public port after every successful registration.</summary>
    public event Action<int>? OnRegistered;

    /// <summary>Raised when the server refuses the ClientHello.</summary>
    public event Action<ServerHelloCode>? OnRefused;

    public void Start() => _run = Task.Run(() => RunAsync(_stop.Token));

    private async ValueTask<Stream> OpenTcpAsync(IPEndPoint? source, CancellationToken ct)
    {
        var s = new Socket(_options.LocalTarget.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await s.ConnectAsync(_options.LocalTarget, ct).ConfigureAwait(false);
            return new NetworkStream(s, ownsSocket: true);
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private async Task RunAsync(CancellationToken ct)
    {
        var delay = _options.ReconnectMin;
        var family = _options.Server.AddressFamily;
        await using var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(family == AddressFamily.InterNetwork ? IPAddress.Any : IPAddress.IPv6Any, 0), _log);
        while (!ct.IsCancellationRequested)
        {
            var registered = false;
            try
            {
                registered = await ConnectionAsync(endpoint, ct, () => delay = _options.ReconnectMin).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is IOException or SocketException or TimeoutException or OperationCanceledException)
            {
                _log.LogWarning("asport client: {Error}; reconnecting in {Delay:0.0} s", e.Message, delay.TotalSeconds);
            }
            if (registered) _registered = new(TaskCreationOptions.RunContinuationsAsynchronously);
            try { await Task.Delay(delay, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.ReconnectMax.Ticks));
            Interlocked.Increment(ref Reconnects);
        }
    }

    /// <summary>One connection's life; true when it got registered before it ended.</summary>
    private async Task<bool> ConnectionAsync(QuicEndpoint endpoint, CancellationToken ct, Action resetBackoff)
    {
        var conn = await endpoint.ConnectAsync(_options.Server, new QuicClientOptions
        {
            Verification = _options.Verification,
            ApplicationProtocols = [AsportRelay.Alpn],
            HandshakeTimeout = _options.HandshakeTimeout,
            IdleTimeout = _options.IdleTimeout,
            // Each forwarded TCP connection is a bidirectional stream the server opens (§3.3): allow as
            // many at once as the host holds SOCKS sessions, not QUIC's default of 256 (the 257th waited).
            MaxIncomingBidirectionalStreams = _options.MaxForwardedStreams,
        }, ct).ConfigureAwait(false);
        Interlocked.Increment(ref Connections);
        await using var _ = conn.ConfigureAwait(false);
        using var life = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var associations = new Dictionary<ushort, Association>();
        try
        {
            // ClientHello on a uni stream, closed after writing (§3.1).
            var label = new byte[16];
            AsportWire.WriteUuid(label, _options.User);
            var token = await conn.ExportKeyingMaterialAsync(label, Encoding.UTF8.GetBytes(_options.Password), 32).ConfigureAwait(false);
            var hello = new byte[AsportWire.ClientHelloSize];
            AsportWire.WriteClientHello(hello, new ClientHello(_options.User, token, _options.Mode, _options.PortStart, _options.PortEnd));
            var hs = await conn.OpenUnidirectionalStreamAsync(ct).ConfigureAwait(false);
            await hs.WriteAsync(hello, ct).ConfigureAwait(false);
            hs.CompleteWrites();

            // ServerHello on the first stream the server opens.
            using var helloTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            helloTimeout.CancelAfter(_options.HandshakeTimeout + TimeSpan.FromSeconds(2));
            QuicStream reply;
            try { reply = await conn.AcceptStreamAsync(helloTimeout.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested) { throw new TimeoutException("no ServerHello (wrong credentials with a silent server?)"); }
            var cmd = await AsportPackets.ReadStreamCommandAsync(reply, 5, helloTimeout.Token).ConfigureAwait(false)
                ?? throw new IOException("ServerHello too long");
            var ok = AsportWire.TryReadServerHello(cmd.Buffer.AsSpan(0, cmd.Length), out var code, out var port);
            ArrayPool<byte>.Shared.Return(cmd.Buffer);
            if (!ok) throw new IOException("malformed ServerHello");
            if (code != ServerHelloCode.Success)
            {
                OnRefused?.Invoke(code);
                throw new AsportRejectedException(code);
            }
            _log.LogInformation("asport client: registered, public port {Port}", port);
            resetBackoff();
            Interlocked.Increment(ref Registrations);
            Volatile.Write(ref IsRegistered, 1);
            OnRegistered?.Invoke(port);
            _registered.TrySetResult(port);

            var tasks = new[]
            {
                HeartbeatLoopAsync(conn, life.Token),
                StreamLoopAsync(conn, associations, life.Token),
                DatagramLoopAsync(conn, associations, life.Token),
                SweepLoopAsync(associations, life.Token),
            };
            var closed = await conn.Closed.WaitAsync(ct).ConfigureAwait(false);
            _log.LogWarning("asport client: connection ended: {Reason}", closed.Reason);
            life.Cancel();
            try { await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or IOException or TimeoutException) { }
            return true;
        }
        finally
        {
            Volatile.Write(ref IsRegistered, 0);
            life.Cancel();
            lock (associations)
            {
                foreach (var a in associations.Values) a.End();
                associations.Clear();
            }
        }
    }

    private async Task HeartbeatLoopAsync(QuicConnection conn, CancellationToken ct)
    {
        using var timer = new PeriodicTimer(_options.Heartbeat);
        var hb = new byte[2];
        AsportWire.WriteHeartbeat(hb);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false)) conn.TrySendDatagram(hb);
        }
        catch (OperationCanceledException) { }
    }

    private async Task StreamLoopAsync(QuicConnection conn, Dictionary<ushort, Association> assoc, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            QuicStream s;
            try { s = await conn.AcceptStreamAsync(ct).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or IOException) { return; }
            if (s.IsUnidirectional) _ = Task.Run(() => UniStreamAsync(conn, assoc, s, ct), CancellationToken.None);
            else _ = Task.Run(() => ConnectStreamAsync(s, ct), CancellationToken.None);
        }
    }

    // Connect (§3.4): header + source address, then raw bytes both ways.
    private async Task ConnectStreamAsync(QuicStream s, CancellationToken ct)
    {
        await using var _ = s.ConfigureAwait(false);
        try
        {
            var head = new byte[AsportWire.HeaderSize + AsportWire.MaxAddressSize];
            var have = 0;
            IPEndPoint? source = null;
            while (true)
            {
                var n = await s.ReadAsync(head.AsMemory(have, 1), ct).ConfigureAwait(false);
                if (n == 0) throw new IOException("stream ended inside the Connect header");
                have += n;
                if (have >= 3)
                {
                    if (!AsportWire.TryReadHeader(head, out var cmd) || cmd != AsportCommand.Connect) throw new IOException("not a Connect");
                    if (AsportWire.TryReadAddress(head.AsSpan(2, have - 2), out source, out var used) && used == have - 2) break;
                    if (head[2] is not (AsportWire.AtypIPv4 or AsportWire.AtypIPv6 or AsportWire.AtypNone)) throw new IOException("bad address type");
                }
                if (have == head.Length) throw new IOException("Connect header too long");
            }
            Interlocked.Increment(ref TcpForwarded);
            if (_serveConnect is not null)
            {
                await _serveConnect(s, source, ct).ConfigureAwait(false);
                return;
            }
            Stream local;
            try { local = await _openLocal(source, ct).ConfigureAwait(false); }
            catch (Exception e) when (e is IOException or SocketException or PtHost.Contract.TransportConnectException)
            {
                Sessions.SessionFailed("local-connect");
                throw;
            }
            Sessions.SessionOpened();
            try
            {
                await using (local.ConfigureAwait(false))
                {
                    await Relay.RunAsync(s, local, _countIn ??= Sessions.AddBytesIn, _countOut ??= Sessions.AddBytesOut, ct).ConfigureAwait(false);
                }
            }
            finally
            {
                Sessions.SessionClosed();
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or PtHost.Contract.TransportConnectException)
        {
            if (e is IOException { Message: var m } && m.StartsWith("not a", StringComparison.Ordinal)) Interlocked.Increment(ref Malformed);
            _log.LogDebug("asport client: Connect stream ended: {Error}", e.Message);
            s.Abort(1);
        }
    }

    private async Task UniStreamAsync(QuicConnection conn, Dictionary<ushort, Association> assoc, QuicStream s, CancellationToken ct)
    {
        await using var _ = s.ConfigureAwait(false);
        (byte[] Buffer, int Length)? cmd;
        try { cmd = await AsportPackets.ReadStreamCommandAsync(s, AsportPackets.MaxStreamCommand, ct).ConfigureAwait(false); }
        catch (Exception e) when (e is IOException or OperationCanceledException) { return; }
        if (cmd is not { } c) return;
        try { OnCommand(conn, assoc, c.Buffer.AsSpan(0, c.Length), streams: true, ct); }
        finally { ArrayPool<byte>.Shared.Return(c.Buffer); }
    }

    private async Task DatagramLoopAsync(QuicConnection conn, Dictionary<ushort, Association> assoc, CancellationToken ct)
    {
        var buf = new byte[65536];
        while (!ct.IsCancellationRequested)
        {
            int n;
            try { n = await conn.ReceiveDatagramAsync(buf, ct).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or IOException) { return; }
            OnCommand(conn, assoc, buf.AsSpan(0, n), streams: false, ct);
        }
    }

    private readonly AsportReassembly _reassembly = new(TimeSpan.FromSeconds(15));
    private readonly object _reassemblyLock = new();

    private void OnCommand(QuicConnection conn, Dictionary<ushort, Association> assoc, ReadOnlySpan<byte> msg, bool streams, CancellationToken ct)
    {
        if (!AsportWire.TryReadHeader(msg, out var cmd)) { Interlocked.Increment(ref Malformed); return; }
        if (cmd == AsportCommand.Dissociate && msg.Length == 4)
        {
            var id = BinaryPrimitives.ReadUInt16BigEndian(msg[2..]);
            lock (assoc)
                if (assoc.Remove(id, out var gone)) gone.End();
            return;
        }
        if (cmd != AsportCommand.Packet || !AsportWire.TryReadPacketHeader(msg[2..], out var h, out var used))
        {
            Interlocked.Increment(ref Malformed);
            return;
        }
        byte[]? payload;
        int length;
        IPEndPoint? address;
        AsportReassembly.Result r;
        lock (_reassemblyLock) r = _reassembly.Offer(h, msg[(2 + used)..], Environment.TickCount64, out payload, out length, out address);
        if (r == AsportReassembly.Result.Rejected) { Interlocked.Increment(ref Malformed); return; }
        if (r == AsportReassembly.Result.Incomplete) return;
        if (_udp is not null)
        {
            try { ToHandler(conn, assoc, h.AssocId, address, payload.AsSpan(0, length)); }
            finally { AsportReassembly.ReturnBuffer(payload!); }
            return;
        }
        try
        {
            Association? a;
            lock (assoc)
            {
                if (!assoc.TryGetValue(h.AssocId, out a))
                {
                    var sock = new Socket(_options.LocalTarget.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
                    sock.Connect(_options.LocalTarget);
                    a = new Association(h.AssocId, sock, address);
                    assoc[h.AssocId] = a;
                    _ = Task.Run(() => UdpBackAsync(conn, assoc, a, ct), CancellationToken.None);
                }
                a.LastActive = Environment.TickCount64;
            }
            Interlocked.Increment(ref UdpForwarded);
            try { a.Socket!.Send(payload.AsSpan(0, length)); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { _log.LogDebug("asport client: UDP send failed: {Error}", e.Message); }
        }
        finally { AsportReassembly.ReturnBuffer(payload!); }
    }

    /// <summary>
    /// The transport's UDP (spec/asport.md §6.2): a packet of a live association goes to its handler;
    /// the first packet of another one asks the handler whether to hold state for it.
    /// </summary>
    private void ToHandler(QuicConnection conn, Dictionary<ushort, Association> assoc, ushort id, IPEndPoint? address, ReadOnlySpan<byte> payload)
    {
        Interlocked.Increment(ref UdpForwarded);
        IAsportUdpAssociation? live;
        lock (assoc)
        {
            if (assoc.TryGetValue(id, out var a) && a.Handler is { Ended: false } h)
            {
                a.LastActive = Environment.TickCount64;
                live = h;
            }
            else
            {
                if (a is not null) assoc.Remove(id);
                // Created under the lock: in QUIC mode packets of one association arrive on concurrent streams.
                var created = _udp!.Open(new AsportPacketWriter(conn, id, address, _options.Mode), payload);
                if (created is not null) assoc[id] = new Association(id, null, address, created);
                return;
            }
        }
        live.OnPacket(payload);
    }

    /// <summary>Replies from the local target go back as Packets of the same association, in the mode the client asked for.</summary>
    private async Task UdpBackAsync(QuicConnection conn, Dictionary<ushort, Association> assoc, Association a, CancellationToken ct)
    {
        var buf = GC.AllocateUninitializedArray<byte>(AsportPackets.MaxPayload);
        var overStreams = AsportWire.UdpOverStreams(_options.Mode);
        while (!ct.IsCancellationRequested)
        {
            int n;
            try { n = await a.Socket!.ReceiveAsync(buf, SocketFlags.None, ct).ConfigureAwait(false); }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused) { continue; }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
            a.LastActive = Environment.TickCount64;
            var pktId = (ushort)Interlocked.Increment(ref a.NextPacketId);
            try
            {
                if (overStreams) await AsportPackets.SendOverStreamAsync(conn, a.Id, pktId, buf.AsMemory(0, n), a.Source, ct).ConfigureAwait(false);
                else AsportPackets.SendNative(conn, a.Id, pktId, buf.AsSpan(0, n), a.Source);
            }
            catch (Exception e) when (e is IOException or OperationCanceledException) { return; }
        }
    }

    /// <summary>Inactive associations lose their socket (§4.5).</summary>
    private async Task SweepLoopAsync(Dictionary<ushort, Association> assoc, CancellationToken ct)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(Math.Clamp(_options.UdpIdleTimeout.TotalSeconds / 4, 1, 15)));
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                var now = Environment.TickCount64;
                lock (assoc)
                    foreach (var a in assoc.Values.ToArray())
                        if (now - a.LastActive > (long)_options.UdpIdleTimeout.TotalMilliseconds || a.Handler is { Ended: true })
                        {
                            assoc.Remove(a.Id);
                            a.End();
                        }
                lock (_reassemblyLock) _reassembly.Expire(now);
            }
        }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        if (_run is not null)
            try { await _run.WaitAsync(TimeSpan.FromSeconds(15)).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or TimeoutException) { }
        _stop.Dispose();
    }
}
