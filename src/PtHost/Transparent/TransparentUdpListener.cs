using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Udp;

namespace PtHost.Transparent;

/// <summary>
/// Transparent UDP and STUN modes (spec/ipc.md §12.4, §12.5): a UDP socket at <c>proxylistenaddr</c>; each source
/// address becomes one UDP association through the transport (spec/turn.md §5), which the server process sends
/// to its target; what the target answers comes back to that source. An association ends after
/// <see cref="IdleTimeout"/> without a datagram either way, or when the server process ends it.
/// In STUN mode only STUN messages (RFC 5389 §6) are carried; anything else is dropped and counted.
/// </summary>
public sealed class TransparentUdpListener : IFrontEnd
{
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(120);
    public static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(5);
    public const int MaxAssociations = 1024;
    /// <summary>Datagrams a source may send while its association opens; more are dropped (counted).</summary>
    public const int PendingDatagrams = 64;
    /// <summary>Longest the receive loop waits for one congested association before it reads on (spec/ipc.md §12.4).</summary>
    public static readonly TimeSpan MaxPause = TimeSpan.FromMilliseconds(100);
    /// <summary>SO_RCVBUF and SO_SNDBUF asked for (the kernel caps them at net.core.rmem_max / wmem_max): room for a burst while the carrier catches up.</summary>
    public const int SocketBuffer = 4 << 20;
    /// <summary>Replies to one source are sent a batch per sendmmsg(2) from a pooled buffer of this size.</summary>
    private const int ReplyBuffer = 2 * 65536;
    private const uint StunMagicCookie = 0x2112A442;
    /// <summary>The receive thread's longest wait in poll(2): how soon it notices a stop.</summary>
    private const int PollTimeoutMs = 200;

    private readonly string _transport;
    private readonly IClientFactory _factory;
    private readonly Destination? _server;
    private readonly PeerAddress _peer;
    private readonly TransportCounters _counters;
    private readonly ILogger _log;
    private readonly bool _stunOnly;
    private readonly TimeSpan _idleTimeout, _sweepInterval;
    private readonly Socket _udp;
    private readonly Dictionary<PeerAddress, Flow> _flows = [];
    private readonly CancellationTokenSource _stop = new();
    private Task? _receive, _sweep;
    private long _dropped, _notStun, _paused;
    private static long s_ids;

    /// <param name="server">The PT server (<c>target</c>); null: the transport finds it (its <c>serverAddress</c> option).</param>
    /// <param name="idleTimeout">Default <see cref="IdleTimeout"/> (spec/ipc.md §12.4); shorter only in tests, with <paramref name="sweepInterval"/>.</param>
    public TransparentUdpListener(string transport, IPEndPoint bind, Destination? server, IClientFactory factory, TransportCounters counters, ILogger log, bool stunOnly,
        TimeSpan? idleTimeout = null, TimeSpan? sweepInterval = null)
    {
        _idleTimeout = idleTimeout ?? IdleTimeout;
        _sweepInterval = sweepInterval ?? SweepInterval;
        _transport = transport;
        _factory = factory;
        _server = server;
        // A bound server sends every frame to its target whatever the frame's address (spec/turn.md §5.4): this one is for the frame only.
        _peer = PeerAddress.From(new IPEndPoint(server is not null && IPAddress.TryParse(server.Host, out var ip) ? ip : IPAddress.Any, server?.Port ?? 9));
        _counters = counters;
        _log = log;
        _stunOnly = stunOnly;
        _udp = new Socket(bind.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            _udp.ReceiveBufferSize = SocketBuffer;
            _udp.SendBufferSize = SocketBuffer;
            _udp.Bind(bind);
        }
        catch
        {
            _udp.Dispose();
            throw;
        }
        LocalEndPoint = (IPEndPoint)_udp.LocalEndPoint!;
    }

    public IPEndPoint LocalEndPoint { get; }

    /// <summary>Open associations (one per source address).</summary>
    public int Associations { get { lock (_flows) return _flows.Count; } }

    /// <summary>Datagrams dropped: while an association opened (beyond <see cref="PendingDatagrams"/>), over the limit, its open failed, or its queue was full.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Times the receive loop waited for a congested association (backpressure, not loss).</summary>
    public long Paused => Interlocked.Read(ref _paused);

    /// <summary>STUN mode: datagrams that were not STUN messages.</summary>
    public long NotStun => Interlocked.Read(ref _notStun);

    public void Start()
    {
        // One thread of its own for the listener's socket (spec/ipc.md §12.4): it blocks in poll(2) and carries each batch to
        // the streams itself, with no hop to the thread pool per batch.
        _receive ??= OwnThread.Start("transparent UDP receive", ReceiveLoop);
        _sweep ??= SweepLoopAsync();
    }

    public async Task StopAsync(CancellationToken drain)
    {
        // Datagrams have no session to drain: stopping ends every association.
        await _stop.CancelAsync().ConfigureAwait(false);
        _udp.Dispose();
        Flow[] flows;
        lock (_flows)
        {
            flows = [.. _flows.Values];
            _flows.Clear();
        }
        foreach (var f in flows) await f.EndAsync().ConfigureAwait(false);
        try { await Task.WhenAll(_receive ?? Task.CompletedTask, _sweep ?? Task.CompletedTask).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stop.IsCancellationRequested) await StopAsync(CancellationToken.None).ConfigureAwait(false);
        _stop.Dispose();
    }

    /// <summary>RFC 5389 §6: top two bits zero, the magic cookie, and a length that is the rest of the datagram, a multiple of 4.</summary>
    public static bool IsStunMessage(ReadOnlySpan<byte> datagram) =>
        datagram.Length >= 20 && (datagram[0] & 0xC0) == 0
        && BinaryPrimitives.ReadUInt32BigEndian(datagram[4..]) == StunMagicCookie
        && BinaryPrimitives.ReadUInt16BigEndian(datagram[2..]) is var length && length % 4 == 0 && length + 20 == datagram.Length;

    /// <summary>
    /// Reads the socket a batch at a time (poll(2), then recvmmsg(2)) on the listener's own thread. A datagram whose
    /// association is congested makes the loop wait (at most <see cref="MaxPause"/>), so a burst waits in the socket's
    /// receive buffer, where the kernel counts what it drops, instead of being dropped inside the host
    /// (spec/ipc.md §12.4, as TURN does: spec/turn.md §5.2).
    /// </summary>
    private void ReceiveLoop()
    {
        var batch = new DatagramBatchReceiver();
        var from = new SocketAddress(_udp.AddressFamily);
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            int count = batch.Receive(_udp, PollTimeoutMs);
            if (count < 0) return; // closed
            if (count == 0) continue;
            // Frames for the associations' streams are written when the batch ends (spec/turn.md §5.5).
            StreamAssociation.BeginBatch();
            try
            {
                for (int i = 0; i < count; i++)
                {
                    var datagram = batch.Packet(i);
                    if (_stunOnly && !IsStunMessage(datagram.Span))
                    {
                        Interlocked.Increment(ref _notStun);
                        _counters.DatagramDropped();
                        continue;
                    }
                    batch.Source(i, from);
                    var source = PeerAddress.From(from);
                    Flow? flow;
                    lock (_flows)
                    {
                        if (!_flows.TryGetValue(source, out flow))
                        {
                            if (_flows.Count >= MaxAssociations)
                            {
                                Interlocked.Increment(ref _dropped);
                                _counters.DatagramDropped();
                                continue;
                            }
                            var copy = new SocketAddress(from.Family, from.Size);
                            from.Buffer.Span[..from.Size].CopyTo(copy.Buffer.Span);
                            flow = new Flow(this, source, copy, Interlocked.Increment(ref s_ids));
                            _flows[source] = flow;
                            flow.Open();
                        }
                    }
                    var pending = flow.Send(datagram);
                    if (!pending.IsCompleted)
                    {
                        Interlocked.Increment(ref _paused);
                        // Congested: the wait blocks this thread only (its own); an ended association's flow goes with it.
                        if (!StreamAssociation.WaitBetweenBatches(pending, MaxPause, ct)) return;
                    }
                }
            }
            finally
            {
                // A short batch drained the socket: this thread would only wait, so it writes; after a full one it reads on.
                StreamAssociation.EndBatch(writeInline: count < batch.Batch);
            }
        }
    }

    /// <summary>Ends associations idle for <see cref="IdleTimeout"/> (spec/ipc.md §12.4).</summary>
    private async Task SweepLoopAsync()
    {
        using var timer = new PeriodicTimer(_sweepInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                long limit = Environment.TickCount64 - (long)_idleTimeout.TotalMilliseconds;
                List<Flow>? idle = null;
                lock (_flows)
                    foreach (var f in _flows.Values)
                        if (Volatile.Read(ref f.LastActive) < limit) (idle ??= []).Add(f);
                if (idle is null) continue;
                foreach (var f in idle)
                {
                    _log.LogDebug("transparent UDP {Transport} association {Id}: idle for {Seconds} s; ended", _transport, f.Id, _idleTimeout.TotalSeconds);
                    Remove(f);
                    await f.EndAsync().ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    private void Remove(Flow flow)
    {
        lock (_flows)
            if (_flows.TryGetValue(flow.Source, out var current) && current == flow) _flows.Remove(flow.Source);
    }

    /// <summary>One source address and its association.</summary>
    private sealed class Flow(TransparentUdpListener owner, PeerAddress source, SocketAddress address, long id)
    {
        private readonly CancellationTokenSource _end = new();
        private IAssociation? _association;
        private List<byte[]>? _pending = [];
        public readonly PeerAddress Source = source;
        public readonly long Id = id;
        public long LastActive = Environment.TickCount64;

        public void Open() => _ = RunAsync();

        /// <summary>
        /// Carries one datagram (copied before this returns); while the association opens, up to <see cref="PendingDatagrams"/>
        /// wait. The task is not complete while the association's queue is congested: the caller waits before reading on.
        /// </summary>
        public ValueTask Send(ReadOnlyMemory<byte> datagram)
        {
            Volatile.Write(ref LastActive, Environment.TickCount64);
            IAssociation? association;
            lock (this)
            {
                association = _association;
                if (association is null)
                {
                    if (_pending is { Count: < PendingDatagrams } pending) pending.Add(datagram.ToArray());
                    else
                    {
                        Interlocked.Increment(ref owner._dropped);
                        owner._counters.DatagramDropped();
                    }
                    return ValueTask.CompletedTask;
                }
            }
            owner._counters.AddBytesIn(datagram.Length);
            if (association is not StreamAssociation queue) return association.SendAsync(owner._peer, datagram, _end.Token); // copies before returning (IAssociation)
            // A datagram the association's queue could not take (spec/turn.md §5.2) counts in DATAGRAMS-DROPPED (spec/ipc.md §12.4).
            long before = queue.Dropped;
            var sent = queue.SendAsync(owner._peer, datagram, _end.Token);
            if (queue.Dropped != before)
            {
                Interlocked.Increment(ref owner._dropped);
                owner._counters.DatagramDropped();
            }
            return sent;
        }

        private async Task RunAsync()
        {
            var ct = _end.Token;
            IAssociation association;
            try
            {
                using var open = CancellationTokenSource.CreateLinkedTokenSource(ct);
                open.CancelAfter(TransparentTcpListener.ConnectTimeout);
                association = await UdpCarrier.OpenAsync(owner._factory, Id, owner._server, open.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                owner._counters.SessionFailed();
                owner._log.LogInformation("transparent UDP {Transport} association {Id}: cannot open: {Error}", owner._transport, Id, e.Message);
                lock (this)
                {
                    Interlocked.Add(ref owner._dropped, _pending?.Count ?? 0);
                    _pending = null;
                }
                owner.Remove(this);
                return;
            }
            owner._counters.SessionOpened();
            List<byte[]>? waiting;
            lock (this)
            {
                _association = association;
                waiting = _pending;
                _pending = null;
            }
            foreach (byte[] d in waiting ?? [])
            {
                owner._counters.AddBytesIn(d.Length);
                _ = association.SendAsync(owner._peer, d, ct);
            }
            // Replies go back a batch per sendmmsg(2): while the association has more frames at hand they join the batch,
            // which is sent before the loop waits for the carrier (spec/ipc.md §12.4).
            byte[] buffer = ArrayPool<byte>.Shared.Rent(ReplyBuffer);
            var send = new DatagramBatchSender(yieldAfterBursts: true); // answers to the application (spec/turn.md §5.4)
            int max = Math.Min(association.MaxDatagramSize, 65536), used = 0;
            try
            {
                while (!ct.IsCancellationRequested)
                {
                    var receive = association.ReceiveAsync(buffer.AsMemory(used, max), ct);
                    if (!receive.IsCompleted && send.Count > 0)
                    {
                        try { await send.FlushAsync(ct).ConfigureAwait(false); }
                        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { } // the receive below ends too
                    }
                    var (_, n) = await receive.ConfigureAwait(false);
                    if (n < 0) break; // the server process ended it
                    Volatile.Write(ref LastActive, Environment.TickCount64);
                    owner._counters.AddBytesOut(n);
                    if (!send.CanAdd(owner._udp, buffer)) await send.FlushAsync(ct).ConfigureAwait(false);
                    send.Add(owner._udp, buffer, used, n, address);
                    used += n;
                    if (buffer.Length - used < max)
                    {
                        await send.FlushAsync(ct).ConfigureAwait(false);
                        used = 0;
                    }
                }
                if (send.Count > 0) await send.FlushAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or SocketException or ObjectDisposedException) { }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
                owner.Remove(this);
                owner._counters.SessionClosed();
                await association.DisposeAsync().ConfigureAwait(false);
            }
        }

        public async Task EndAsync()
        {
            try { await _end.CancelAsync().ConfigureAwait(false); }
            catch (ObjectDisposedException) { }
        }
    }
}
