using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Transports.Plain;

namespace PtHost.Transports.Rud;

/// <summary>The server factory: keys, and <see cref="RudServerManager"/>s.</summary>
internal sealed class RudServer(TransportEnvironment context, RudServerOptions options) : IServerFactory
{
    public const string KeyFile = "rud-key";

    /// <summary>A fresh static key pair: the private key for the server, the public key for clients (§12).</summary>
    public GeneratedConfiguration GenerateConfiguration()
    {
        var key = X25519.GeneratePrivateKey();
        var pub = new byte[X25519.KeySize];
        X25519.PublicKey(key, pub);
        return new(new JObject { ["serverKey"] = Convert.ToBase64String(pub) }, new JObject { ["key"] = Convert.ToBase64String(key) });
    }

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => Start(binding);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => Start(binding);

    private ValueTask<IServerManager> Start(ServerBinding binding)
    {
        var key = options.Key ?? LoadOrCreateStateKey();
        return ValueTask.FromResult<IServerManager>(new RudServerManager(context, options, key, binding));
    }

    /// <summary>The key kept in the state directory (mode 0600), created on first use (§12).</summary>
    private byte[] LoadOrCreateStateKey()
    {
        string path = Path.Combine(context.StateDirectory, KeyFile);
        if (File.Exists(path))
        {
            try
            {
                var k = Convert.FromBase64String(File.ReadAllText(path).Trim());
                if (k.Length == X25519.KeySize) return k;
            }
            catch (FormatException) { }
            throw new TransportOptionsException($"rud: {path} does not hold a base64 32-byte key");
        }
        var key = X25519.GeneratePrivateKey();
        Directory.CreateDirectory(context.StateDirectory);
        var fileOptions = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) fileOptions.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using (var w = new StreamWriter(path, fileOptions)) w.Write(Convert.ToBase64String(key));
        return key;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>A running rud server: accepts connections and serves every stream they open (§12).</summary>
internal sealed class RudServerManager : IServerManager
{
    private static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly RudEndpoint _endpoint;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly Task _acceptLoop;
    private readonly ConcurrentDictionary<long, Task> _sessions = new();
    private static long s_ids;

    public RudServerManager(TransportEnvironment context, RudServerOptions options, byte[] key, ServerBinding binding)
    {
        _context = context;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Rud");
        try
        {
            _endpoint = RudEndpoint.Bind(binding.BindAddress, new RudEndpointOptions
            {
                StaticPrivateKey = key, Challenge = options.Challenge, AllowFirstContact = options.FirstContact,
                CongestionControl = options.Congestion,
            }, _log);
        }
        catch (SocketException e)
        {
            throw new TransportOptionsException($"cannot listen on udp {binding.BindAddress}: {e.SocketErrorCode}", e);
        }
        LocalEndPoint = _endpoint.LocalEndPoint;
        Args = new Dictionary<string, string> { ["key"] = Convert.ToBase64String(_endpoint.StaticPublicKey!) };
        _acceptLoop = AcceptConnectionsAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    internal RudEndpoint Endpoint => _endpoint;

    private async Task AcceptConnectionsAsync()
    {
        try
        {
            while (true)
            {
                var conn = await _endpoint.AcceptConnectionAsync(_stopping.Token).ConfigureAwait(false);
                _log.LogInformation("rud: connection from {Remote} ({Mode} exchange, congestion {Congestion})", conn.RemoteEndPoint, conn.Mode, RudOptionText.CongestionName(_endpoint.Options.CongestionControl));
                _ = AcceptStreamsAsync(conn);
                _ = AcceptDatagramChannelsAsync(conn);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
    }

    private async Task AcceptStreamsAsync(RudConnection conn)
    {
        try
        {
            while (true)
            {
                var stream = await conn.AcceptStreamAsync(_stopping.Token).ConfigureAwait(false);
                long id = Interlocked.Increment(ref s_ids);
                var task = ServeAsync(conn, stream, id);
                _sessions[id] = task;
                _ = task.ContinueWith(_ => _sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
        catch (IOException) { }
    }

    /// <summary>Every datagram stream a client opens is one UDP association (§12.1).</summary>
    private async Task AcceptDatagramChannelsAsync(RudConnection conn)
    {
        try
        {
            while (true)
            {
                var channel = await conn.AcceptDatagramChannelAsync(_stopping.Token).ConfigureAwait(false);
                long id = Interlocked.Increment(ref s_ids);
                var association = new RudDatagramAssociation(channel, conn.RemoteEndPoint, _context, _binding, _log, id);
                var task = association.RunAsync(_abort.Token);
                _sessions[id] = task;
                _ = task.ContinueWith(_ => _sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
        catch (IOException) { }
    }

    private async Task ServeAsync(RudConnection conn, RudStream stream, long id)
    {
        var remote = conn.RemoteEndPoint;
        Stream? onward = null;
        bool opened = false, failed = false;
        try
        {
            Destination? destination;
            SessionKind kind;
            using (var preamble = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token))
            {
                preamble.CancelAfter(PreambleTimeout);
                try { (destination, kind) = await PlainWire.ReadPreambleAsync(stream, preamble.Token).ConfigureAwait(false); }
                catch (InvalidDataException)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    _log.LogInformation("rud session {Id} from {Remote}: not a plain preamble; stream reset", id, remote);
                    stream.Abort(2);
                    return;
                }
                catch (FormatException e)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    await stream.WriteAsync(new[] { (byte)ConnectFailure.AddressTypeNotSupported }, _abort.Token).ConfigureAwait(false);
                    stream.ShutdownWrite();
                    _log.LogInformation("rud session {Id} from {Remote}: {Error}", id, remote, e.Message);
                    return;
                }
            }
            try { onward = await _binding.Handler.OpenAsync(new InboundSession(remote, destination, id, kind), _abort.Token).ConfigureAwait(false); }
            catch (TransportConnectException e)
            {
                failed = true;
                _context.Counters.SessionFailed();
                _log.LogInformation("rud session {Id}: {Error}", id, e.Message);
                await stream.WriteAsync(new[] { (byte)e.Failure }, _abort.Token).ConfigureAwait(false);
                stream.ShutdownWrite();
                return;
            }
            await stream.WriteAsync(new byte[] { 0 }, _abort.Token).ConfigureAwait(false);
            opened = true;
            if (kind == SessionKind.Datagram)
                _log.LogInformation("rud session {Id} from {Remote}: a UDP association carried in a stream (spec/turn.md §5.2), not in a datagram stream", id, remote);
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, _abort.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            if (!opened && !failed) _context.Counters.SessionFailed();
            _log.LogDebug("rud session {Id} ended: {Error}", id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _acceptLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        _abort.Cancel();
        await _acceptLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (Exception) { }
        await _endpoint.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
        _abort.Dispose();
    }
}

/// <summary>
/// Server process: one datagram stream a client opened (spec/rud.md §12.1). Its first datagram must be
/// OPEN <c>[::]:0</c>; the association is then the host's UDP association (spec/turn.md §5.4), relayed
/// like any session: this stream's reads are the client's DATA and CHECK frames, its writes the host's
/// frames, each sent as one RUD datagram.
/// </summary>
internal sealed class RudDatagramAssociation : Stream, IHalfClosable
{
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(60);
    public static readonly TimeSpan IdleCheck = TimeSpan.FromSeconds(15);
    private readonly RudDatagramChannel _channel;
    private readonly IPEndPoint _remote;
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly long _id;
    private readonly byte[] _in = GC.AllocateUninitializedArray<byte>(RudUdpFrames.MaxFrame);
    private readonly byte[] _out = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private readonly CancellationTokenSource _stop = new();
    private int _outLength, _pendingAt, _pendingEnd;
    private byte[]? _relayed;
    private long _lastHeard = Environment.TickCount64;
    private long _fromClient, _toClient, _tooLarge, _notQueued, _malformed;
    private int _ended;

    public RudDatagramAssociation(RudDatagramChannel channel, IPEndPoint remote, TransportEnvironment context, ServerBinding binding, ILogger log, long id)
    {
        _channel = channel;
        _remote = remote;
        _context = context;
        _binding = binding;
        _log = log;
        _id = id;
    }

    /// <summary>Waits for OPEN, opens the host's association (limits, allow list, target) and relays; a refusal is a CLOSE.</summary>
    public async Task RunAsync(CancellationToken abort)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(abort, _stop.Token);
        var idle = IdleLoopAsync(_stop.Token);
        Stream? onward = null;
        bool opened = false;
        try
        {
            int n;
            using (var first = CancellationTokenSource.CreateLinkedTokenSource(linked.Token))
            {
                first.CancelAfter(IdleTimeout);
                try { n = await _channel.ReceiveAsync(_in, first.Token).ConfigureAwait(false); }
                catch (ChannelClosedException) { return; }
            }
            if (!RudUdpFrames.TryRead(_in.AsSpan(0, n), out var type, out var address, out _)
                || type != RudUdpFrames.Open || address.Port != 0 || n < RudUdpFrames.OpenFrame.Length)
            {
                Interlocked.Increment(ref _malformed);
                _context.Counters.SessionFailed();
                _log.LogInformation("rud UDP association {Id} from {Remote}: the first datagram of stream {Stream} is not OPEN [::]:0; CLOSE sent", _id, _remote, _channel.Id);
                _channel.TrySend(RudUdpFrames.CloseFrame);
                return;
            }
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(_remote, null, _id, SessionKind.Datagram), linked.Token).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                _context.Counters.SessionFailed();
                _log.LogInformation("rud UDP association {Id} from {Remote}: {Error}; CLOSE sent", _id, _remote, e.Message);
                _channel.TrySend(RudUdpFrames.CloseFrame);
                return;
            }
            opened = true;
            _context.Counters.SessionOpened();
            _log.LogInformation("rud UDP association {Id} from {Remote} on datagram stream {Stream}", _id, _remote, _channel.Id);
            await _binding.Handler.RelayAsync(this, onward, linked.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or ChannelClosedException)
        {
            _log.LogDebug("rud UDP association {Id}: {Error}", _id, e.Message);
        }
        finally
        {
            if (opened)
            {
                _context.Counters.SessionClosed();
                _log.LogInformation("rud UDP association {Id} ended: {In} frames from the client, {Out} datagrams to it, {TooLarge} too large for a RUD datagram, {NotQueued} not queued (send queue full), {Malformed} malformed",
                    _id, Interlocked.Read(ref _fromClient), Interlocked.Read(ref _toClient), Interlocked.Read(ref _tooLarge), Interlocked.Read(ref _notQueued), Interlocked.Read(ref _malformed));
            }
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            End();
            await idle.ConfigureAwait(false);
            ArrayPool<byte>.Shared.Return(_out); // the relay loop is over: nothing writes to it any more
        }
    }

    /// <summary>60 s without a datagram from the client (its keep-alive comes every 15 s) ends the association.</summary>
    private async Task IdleLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(IdleCheck);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                if (Environment.TickCount64 - Volatile.Read(ref _lastHeard) > (long)IdleTimeout.TotalMilliseconds)
                {
                    _log.LogInformation("rud UDP association {Id}: nothing from the client for {Seconds:0} s; ended", _id, IdleTimeout.TotalSeconds);
                    _channel.TrySend(RudUdpFrames.CloseFrame);
                    End();
                    return;
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>Ends the association: a pending read returns 0 (the relay ends), later datagrams of the stream are dropped.</summary>
    private void End()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _channel.Complete(null);
        _stop.Cancel();
    }

    // ---- from the client: DATA and CHECK frames, one per read -----------------------------------

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            if (_pendingAt < _pendingEnd)
            {
                int k = Math.Min(buffer.Length, _pendingEnd - _pendingAt);
                _in.AsSpan(_pendingAt, k).CopyTo(buffer.Span);
                _pendingAt += k;
                return k;
            }
            if (Volatile.Read(ref _ended) != 0) return 0;
            int n;
            try { n = await _channel.ReceiveAsync(_in, cancellationToken).ConfigureAwait(false); }
            catch (ChannelClosedException) { return 0; }
            Volatile.Write(ref _lastHeard, Environment.TickCount64);
            if (!RudUdpFrames.TryRead(_in.AsSpan(0, n), out var type, out _, out var payload) || payload.GetOffsetAndLength(n).Length > RudUdpFrames.MaxPayload)
            {
                Interlocked.Increment(ref _malformed); // not one frame, or a payload above 1,178 bytes
                continue;
            }
            switch (type)
            {
                case RudUdpFrames.Open: // OPEN repeated or keep-alive: RELAYED again, never longer than the OPEN
                    if (Volatile.Read(ref _relayed) is { } relayed && n >= relayed.Length) _channel.TrySend(relayed);
                    continue;
                case RudUdpFrames.Close:
                    End();
                    return 0;
                case DatagramFrameType.Data:
                case DatagramFrameType.Check:
                    Interlocked.Increment(ref _fromClient);
                    _pendingAt = 0;
                    _pendingEnd = n;
                    continue;
            }
            // other types from the client are ignored (spec/turn.md §5.2)
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("use ReadAsync");

    // ---- from the host's UDP association: one RUD datagram per frame ------------------------------

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            int n = Math.Min(buffer.Length, _out.Length - _outLength);
            buffer.Span[..n].CopyTo(_out.AsSpan(_outLength));
            _outLength += n;
            buffer = buffer[n..];
            int at = 0;
            while (true)
            {
                int length = DatagramFrame.TryParse(_out.AsSpan(at, _outLength - at), out var type, out _, out var payload);
                if (length < 0) return ValueTask.FromException(new IOException("malformed datagram frame from the host"));
                if (length == 0) break;
                var frame = _out.AsSpan(at, length);
                if (type == DatagramFrameType.Relayed && _relayed is null) Volatile.Write(ref _relayed, frame.ToArray());
                if (payload.GetOffsetAndLength(length).Length > RudUdpFrames.MaxPayload) Interlocked.Increment(ref _tooLarge); // a peer's datagram above 1,178 bytes
                else if (_channel.TrySend(frame)) Interlocked.Increment(ref _toClient);
                else Interlocked.Increment(ref _notQueued);
                at += length;
            }
            if (at > 0)
            {
                Buffer.BlockCopy(_out, at, _out, 0, _outLength - at);
                _outLength -= at;
            }
        }
        return ValueTask.CompletedTask;
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    /// <summary>The host's association ended: the client process is told with CLOSE.</summary>
    public void ShutdownWrite()
    {
        if (Volatile.Read(ref _ended) == 0)
        {
            _channel.TrySend(RudUdpFrames.CloseFrame);
            _channel.TrySend(RudUdpFrames.CloseFrame);
        }
        End();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) End();
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
