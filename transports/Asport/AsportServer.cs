using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Quic;
using PtHost.Transports.Plain;

namespace PtHost.Transports.Asport;

internal sealed class AsportServer(TransportEnvironment context, AsportServerOptions options) : IServerFactory
{
    public static readonly TimeSpan RegistrationTimeout = TimeSpan.FromSeconds(30);

    public GeneratedConfiguration GenerateConfiguration() => new(new JObject(), new JObject
    {
        ["server"] = options.Server.ToString(),
        ["pin"] = Convert.ToHexString(options.Pin).ToLowerInvariant(),
        ["user"] = options.User.ToString(),
        ["password"] = options.Password,
    });

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding, cancellationToken);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding, cancellationToken);

    private async ValueTask<IServerManager> StartAsync(ServerBinding binding, CancellationToken ct)
    {
        var manager = new AsportServerManager(context, options, binding);
        try
        {
            await manager.StartAsync(ct).ConfigureAwait(false);
            return manager;
        }
        catch
        {
            await manager.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>A running asport server transport: an ASPORT client whose Connect streams become sessions.</summary>
internal sealed class AsportServerManager : IServerManager
{
    private readonly TransportEnvironment _context;
    private readonly AsportServerOptions _options;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly AsportRelayClient _client;
    private static long s_ids;
    private static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);

    public AsportServerManager(TransportEnvironment context, AsportServerOptions options, ServerBinding binding)
    {
        _context = context;
        _options = options;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Asport");
        var target = binding.Target is { Address: { } a } t ? new IPEndPoint(a, t.Port) : new IPEndPoint(IPAddress.Loopback, 9);
        _client = new AsportRelayClient(new AsportRelayClientOptions
        {
            Server = options.Server,
            Verification = QuicPeerVerification.Pinned(options.Pin),
            User = options.User,
            Password = options.Password,
            Mode = options.Mode,
            PortStart = options.PortStart,
            PortEnd = options.PortEnd,
            LocalTarget = target,
        }, _log, serveConnect: ServeAsync,
            udp: AsportWire.ForwardsUdp(options.Mode) ? new AsportDatagramHandler(context, binding, _log, () => Interlocked.Increment(ref s_ids)) : null);
        _client.OnRegistered += Announce;
        _client.OnRefused += code => _log.LogError("asport: the server refused this client: {Code}", code);
    }

    public IPEndPoint LocalEndPoint { get; private set; } = new(IPAddress.Any, 0);

    public IReadOnlyDictionary<string, string> Args { get; } = new Dictionary<string, string>();

    public async Task StartAsync(CancellationToken ct)
    {
        _client.Start();
        try
        {
            var port = await _client.Registered.WaitAsync(AsportServer.RegistrationTimeout, ct).ConfigureAwait(false);
            LocalEndPoint = new IPEndPoint(_options.Server.Address, port);
        }
        catch (TimeoutException)
        {
            throw new TransportOptionsException($"no registration with the ASPORT server {_options.Server} within {AsportServer.RegistrationTimeout.TotalSeconds:0} s (see the log)");
        }
    }

    /// <summary>Each (re-)registration announces the public address (SMESSAGE asport.address).</summary>
    private void Announce(int port)
    {
        var address = new IPEndPoint(_options.Server.Address, port).ToString();
        _log.LogInformation("asport: public address {Address}", address);
        _context.Signals.Send(new Signal(AsportTransport.AddressSignal,
            new JObject { ["address"] = address, ["udp"] = AsportWire.ForwardsUdp(_options.Mode) }));
    }

    /// <summary>One Connect stream = one session: plain's preamble, then the host relays.</summary>
    private async Task ServeAsync(QuicStream stream, IPEndPoint? source, CancellationToken ct)
    {
        long id = Interlocked.Increment(ref s_ids);
        Stream? onward = null;
        var opened = false;
        try
        {
            Destination? destination;
            SessionKind kind;
            using (var preamble = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                preamble.CancelAfter(PreambleTimeout);
                try { (destination, kind) = await PlainWire.ReadPreambleAsync(stream, preamble.Token).ConfigureAwait(false); }
                catch (Exception e) when (e is InvalidDataException or FormatException)
                {
                    _context.Counters.SessionFailed();
                    _log.LogInformation("asport session {Id} from {Source}: {Error}", id, source, e.Message);
                    if (e is FormatException) await ReplyAsync(stream, (byte)ConnectFailure.AddressTypeNotSupported, ct).ConfigureAwait(false);
                    return;
                }
            }
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(source, destination, id, kind), ct).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                _context.Counters.SessionFailed();
                _log.LogInformation("asport session {Id}: {Error}", id, e.Message);
                await ReplyAsync(stream, (byte)e.Failure, ct).ConfigureAwait(false);
                await FinishRefusedAsync(stream, ct).ConfigureAwait(false);
                return;
            }
            await ReplyAsync(stream, 0, ct).ConfigureAwait(false);
            opened = true;
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            if (!opened) _context.Counters.SessionFailed();
            _log.LogDebug("asport session {Id} ended: {Error}", id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static async Task ReplyAsync(Stream stream, byte code, CancellationToken ct) =>
        await stream.WriteAsync(new[] { code }, ct).ConfigureAwait(false);

    /// <summary>
    /// After a failure reply: FIN, then wait (at most 10 s) for the PT client to close its side, which it does on
    /// reading the reply. Disposing at once also sends STOP_SENDING while the relay may still be writing the
    /// session's first bytes into the stream; under many concurrent refusals the relay then forwarded neither
    /// the reply nor a close, and the SOCKS request waited for its 30 s connect limit.
    /// </summary>
    private static async Task FinishRefusedAsync(QuicStream stream, CancellationToken ct)
    {
        stream.CompleteWrites();
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(PreambleTimeout);
        var buf = new byte[512];
        try { while (await stream.ReadAsync(buf, limit.Token).ConfigureAwait(false) > 0) { } }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException) { }
    }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    public async Task StopAsync(CancellationToken cancellationToken) => await _client.DisposeAsync().ConfigureAwait(false);

    public async ValueTask DisposeAsync() => await _client.DisposeAsync().ConfigureAwait(false);
}

/// <summary>
/// Server process: the ASPORT client's UDP handler (spec/asport.md §6.2). An association starts with
/// OPEN and becomes the host's UDP association (spec/turn.md §5.4), relayed like any session; any
/// other first frame is answered with CLOSE and no state is held.
/// </summary>
internal sealed class AsportDatagramHandler(TransportEnvironment context, ServerBinding binding, ILogger log, Func<long> nextSession) : IAsportUdpHandler
{
    private long _malformed;

    public IAsportUdpAssociation? Open(AsportUdpPeer peer, ReadOnlySpan<byte> payload)
    {
        if (!AsportUdpFrames.TryRead(payload, out var type, out var address, out _))
        {
            Malformed(peer, "not one datagram frame");
            return null;
        }
        if (type == AsportUdpFrames.Open && address.Port == 0)
        {
            if (payload.Length < AsportUdpFrames.OpenFrame.Length)
            {
                Malformed(peer, "OPEN shorter than 22 bytes");
                return null;
            }
            var association = new AsportDatagramAssociation(peer, context, binding, log, nextSession());
            association.Start();
            return association;
        }
        // No such association (a keep-alive included: a new one would have another relayed address).
        if (type != AsportUdpFrames.Close) AsportDatagramAssociation.Fire(peer, AsportUdpFrames.CloseFrame, CancellationToken.None);
        return null;
    }

    internal void Malformed(AsportUdpPeer peer, string what)
    {
        if (Interlocked.Increment(ref _malformed) <= 10)
            log.LogInformation("asport UDP association {Id} from {Source}: dropped a malformed datagram: {What}", peer.Id, peer.Source, what);
    }
}

/// <summary>
/// One association in the server process: frames from the client process are read by the host's relay
/// loop (towards its UDP association), frames the host writes go back as Packets, one frame each.
/// </summary>
internal sealed class AsportDatagramAssociation : Stream, IHalfClosable, IAsportUdpAssociation
{
    public const int QueueFrames = 2048;
    private readonly AsportUdpPeer _peer;
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly long _id;
    private readonly Channel<(byte[] Buffer, int Offset, int Length)> _fromClient =
        Channel.CreateBounded<(byte[], int, int)>(new BoundedChannelOptions(QueueFrames) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly CancellationTokenSource _stop = new();
    private readonly byte[] _out = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private int _outLength;
    private readonly PooledSegmentReader _reader;
    private byte[]? _relayed;
    private int _ended;
    private long _dropped;

    public AsportDatagramAssociation(AsportUdpPeer peer, TransportEnvironment context, ServerBinding binding, ILogger log, long id)
    {
        _reader = new PooledSegmentReader(_fromClient.Reader);
        _peer = peer;
        _context = context;
        _binding = binding;
        _log = log;
        _id = id;
    }

    public bool Ended => Volatile.Read(ref _ended) != 0;

    public void Start() => _ = Task.Run(RunAsync);

    /// <summary>The host opens its UDP association (limits, allow list, target) and relays; a refusal is a CLOSE.</summary>
    private async Task RunAsync()
    {
        Stream onward;
        try
        {
            onward = await _binding.Handler.OpenAsync(new InboundSession(_peer.Source, null, _id, SessionKind.Datagram), _stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TransportConnectException or OperationCanceledException)
        {
            _context.Counters.SessionFailed();
            _log.LogInformation("asport UDP association {Id} from {Source}: {Error}", _id, _peer.Source, e.Message);
            Fire(_peer, AsportUdpFrames.CloseFrame, CancellationToken.None);
            End();
            ArrayPool<byte>.Shared.Return(_out); // the relay loop never ran: nothing writes to it
            return;
        }
        _context.Counters.SessionOpened();
        _log.LogDebug("asport UDP association {Id} from {Source} opened (ASPORT association {Assoc})", _id, _peer.Source, _peer.Id);
        try
        {
            await _binding.Handler.RelayAsync(this, onward, _stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.LogDebug("asport UDP association {Id}: {Error}", _id, e.Message);
        }
        finally
        {
            _context.Counters.SessionClosed();
            await onward.DisposeAsync().ConfigureAwait(false);
            End();
            ArrayPool<byte>.Shared.Return(_out); // the relay loop is over: nothing writes to it any more
            var dropped = Interlocked.Read(ref _dropped);
            if (dropped > 0) _log.LogInformation("asport UDP association {Id}: {Dropped} datagrams dropped (queue full, too large, or not sent)", _id, dropped);
        }
    }

    /// <summary>Sends a control frame without waiting (QUIC mode opens a stream); failures are ignored.</summary>
    internal static void Fire(AsportUdpPeer peer, byte[] frame, CancellationToken ct)
    {
        var send = peer.SendAsync(frame, ct);
        if (!send.IsCompleted) _ = send.AsTask().ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
    }

    // ---- from the client process (ASPORT receive paths; must not block) --------------------------

    public void OnPacket(ReadOnlySpan<byte> payload)
    {
        if (!AsportUdpFrames.TryRead(payload, out var type, out _, out _))
        {
            Interlocked.Increment(ref _dropped);
            return;
        }
        switch (type)
        {
            case AsportUdpFrames.Open: // keep-alive: RELAYED again, never longer than the OPEN
                if (Volatile.Read(ref _relayed) is { } relayed && payload.Length >= relayed.Length) Fire(_peer, relayed, _stop.Token);
                return;
            case AsportUdpFrames.Close:
                End();
                return;
            case DatagramFrameType.Data:
            case DatagramFrameType.Check:
                byte[] copy = ArrayPool<byte>.Shared.Rent(payload.Length);
                payload.CopyTo(copy);
                if (!_fromClient.Writer.TryWrite((copy, 0, payload.Length)))
                {
                    ArrayPool<byte>.Shared.Return(copy);
                    Interlocked.Increment(ref _dropped);
                }
                return;
        }
        // other types from the client are ignored (spec/turn.md §5.2)
    }

    /// <summary>The ASPORT side ended it (Dissociate, idle, connection gone), or the client sent CLOSE: the relay loop sees the end.</summary>
    public void End()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _fromClient.Writer.TryComplete();
        _stop.Cancel();
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _reader.ReadAsync(buffer, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("use ReadAsync");

    // ---- from the host's UDP association: one Packet per frame ------------------------------------

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            int n = Math.Min(buffer.Length, _out.Length - _outLength);
            buffer[..n].CopyTo(_out.AsMemory(_outLength));
            _outLength += n;
            buffer = buffer[n..];
            int at = 0;
            while (true)
            {
                int length = DatagramFrame.TryParse(_out.AsSpan(at, _outLength - at), out var type, out _, out _);
                if (length < 0) throw new IOException("malformed datagram frame from the host");
                if (length == 0) break;
                var frame = _out.AsMemory(at, length);
                if (type == DatagramFrameType.Relayed && _relayed is null) Volatile.Write(ref _relayed, frame.ToArray());
                if (length > AsportUdpFrames.MaxFrame || !await _peer.SendAsync(frame, _stop.Token).ConfigureAwait(false))
                    Interlocked.Increment(ref _dropped);
                at += length;
            }
            if (at > 0)
            {
                Buffer.BlockCopy(_out, at, _out, 0, _outLength - at);
                _outLength -= at;
            }
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    /// <summary>The host's association ended: the client process is told with CLOSE.</summary>
    public void ShutdownWrite()
    {
        if (!Ended) Fire(_peer, AsportUdpFrames.CloseFrame, CancellationToken.None);
        End();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            End();
            _reader.ReturnQueued();
        }
        base.Dispose(disposing);
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
