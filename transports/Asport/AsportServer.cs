using System.Buffers;
using System.Net;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Quic;

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
    private readonly CancellationTokenSource _abort = new();

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
        }, _log, serveConnect: (stream, source, ct) => binding.Handler.ServeAsync(stream, source, ct),
            udp: AsportWire.ForwardsUdp(options.Mode) ? new AsportDatagramHandler(binding.Handler, _log, _abort.Token) : null);
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

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _client.DisposeAsync().ConfigureAwait(false);
        if (!_abort.IsCancellationRequested) _abort.Cancel();
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        _abort.Dispose();
    }
}

/// <summary>
/// Server process: the ASPORT relay client's UDP handler (spec/asport.md §6.2). An association starts
/// with OPEN <c>[::]:0</c> and becomes the host's UDP association (spec/turn.md §5.6) over an
/// <see cref="AsportDatagramCarrier"/>; any other first frame is answered with CLOSE and no state is held.
/// </summary>
internal sealed class AsportDatagramHandler(IInboundHandler host, ILogger log, CancellationToken abort) : IAsportUdpHandler
{
    private long _malformed;

    public IAsportUdpAssociation? Open(AsportPacketWriter peer, ReadOnlySpan<byte> payload)
    {
        if (!DatagramFrame.TryReadDatagram(payload, out var type, out var address, out _))
        {
            Malformed(peer, "not one datagram frame");
            return null;
        }
        if (type == DatagramFrameType.Open && address.Port == 0)
        {
            if (payload.Length < DatagramFrame.OpenFrame.Length)
            {
                Malformed(peer, "OPEN shorter than 22 bytes");
                return null;
            }
            var carrier = new AsportDatagramCarrier(peer, log);
            carrier.OnPacket(payload); // the host reads the OPEN first
            _ = Task.Run(() => host.ServeAssociationAsync(carrier, peer.Source, abort), CancellationToken.None);
            return carrier;
        }
        // No such association (a keep-alive included: a new one would have another relayed address).
        if (type != DatagramFrameType.Close) AsportDatagramCarrier.Fire(peer, DatagramFrame.CloseFrame);
        return null;
    }

    private void Malformed(AsportPacketWriter peer, string what)
    {
        if (Interlocked.Increment(ref _malformed) <= 10)
            log.LogInformation("asport UDP association {Id} from {Source}: dropped a malformed datagram: {What}", peer.Id, peer.Source, what);
    }
}

/// <summary>
/// One ASPORT association as the datagram carrier of a UDP association (spec/asport.md §6.2): the
/// relay client's Packets are queued (at most <see cref="QueueFrames"/>; more are dropped), frames go
/// back as Packets in the client's forward mode, one frame each.
/// </summary>
internal sealed class AsportDatagramCarrier(AsportPacketWriter peer, ILogger log) : IDatagramCarrier, IAsportUdpAssociation
{
    public const int QueueFrames = 2048;
    // Not single-reader: Complete drains what is left while a receive may be pending.
    private readonly Channel<(byte[] Buffer, int Length)> _queue =
        Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(QueueFrames) { FullMode = BoundedChannelFullMode.Wait });
    private int _ended;
    private long _dropped;

    public int MaxFrameLength => AsportUdpFrames.MaxFrame;

    public bool Ended => Volatile.Read(ref _ended) != 0;

    /// <summary>A Packet from the relay client (its receive paths: must not block).</summary>
    public void OnPacket(ReadOnlySpan<byte> payload)
    {
        // CLOSE ends the association at once: the relay client's next packet for this id must find it gone.
        if (DatagramFrame.TryReadDatagram(payload, out var type, out _, out _) && type == DatagramFrameType.Close)
        {
            Complete();
            return;
        }
        byte[] copy = ArrayPool<byte>.Shared.Rent(payload.Length);
        payload.CopyTo(copy);
        if (!_queue.Writer.TryWrite((copy, payload.Length)))
        {
            ArrayPool<byte>.Shared.Return(copy);
            if (!Ended) Interlocked.Increment(ref _dropped);
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        (byte[] Buffer, int Length) packet;
        try { packet = await _queue.Reader.ReadAsync(cancellationToken).ConfigureAwait(false); }
        catch (ChannelClosedException) { return -1; }
        int n = Math.Min(packet.Length, buffer.Length);
        packet.Buffer.AsSpan(0, n).CopyTo(buffer.Span);
        ArrayPool<byte>.Shared.Return(packet.Buffer);
        return n;
    }

    public ValueTask<bool> SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken) => peer.SendAsync(frame, cancellationToken);

    /// <summary>Sends a control frame without waiting (QUIC mode opens a stream); failures are ignored.</summary>
    internal static void Fire(AsportPacketWriter peer, byte[] frame)
    {
        var send = peer.SendAsync(frame, CancellationToken.None);
        if (!send.IsCompleted) _ = send.AsTask().ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
    }

    /// <summary>The ASPORT side ended the association (Dissociate, idle, the connection ended).</summary>
    public void End() => Complete();

    public void Complete()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _queue.Writer.TryComplete();
        while (_queue.Reader.TryRead(out var left)) ArrayPool<byte>.Shared.Return(left.Buffer);
        var dropped = Interlocked.Read(ref _dropped);
        if (dropped > 0) log.LogInformation("asport UDP association {Id}: {Dropped} datagrams dropped (queue full)", peer.Id, dropped);
    }
}
