using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace PtHost.Transports.Rud;

/// <summary>Packets in (the receive loops: handshake messages to the exchanges, data packets to their connections) and out (sending, and the driver that runs every connection's timers).</summary>
public sealed partial class RudEndpoint
{
    // ---- packets in ----

    private Task ReceiveLoopAsync(Socket socket) =>
        Task.Factory.StartNew(() => ReceiveLoop(socket), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>
    /// The socket's receive thread (§9.4): a batch of datagrams per system call, handled under one
    /// acquisition of the lock; then each connection the batch touched sends what became due.
    /// </summary>
    private void ReceiveLoop(Socket socket)
    {
        Thread.CurrentThread.Name = "rud receive";
        var receiver = new UdpReceiver();
        var from = new SocketAddress(socket.AddressFamily);
        var wakes = new List<TaskCompletionSource>();
        while (!_stop.IsCancellationRequested)
        {
            int n = receiver.Receive(socket, 100);
            if (n < 0) return;
            if (n == 0) continue;
            // Headers unprotected (§3.3), and Exchanges handled first, outside the lock (their key agreements
            // must not hold up data packets, §4.3).
            for (int i = 0; i < n; i++)
            {
                var packet = receiver.Packet(i);
                _kinds[i] = Classify(packet);
                if (_kinds[i] != Inbound.Exchange) continue;
                receiver.Source(i, from);
                try { OnExchange(packet, from); }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    Counters.Increment(ref Counters.InternalErrors);
                    _log.PacketFailed(e, from);
                }
            }
            lock (Gate)
            {
                _inBatch = true;
                long now = Now();
                for (int i = 0; i < n; i++)
                {
                    var packet = receiver.Packet(i);
                    if (_kinds[i] == Inbound.Malformed) { Counters.Increment(ref Counters.Malformed); continue; }
                    if (_kinds[i] == Inbound.Exchange) continue;
                    receiver.Source(i, from);
                    try { OnPacket(packet, from, now, _kinds[i] == Inbound.Unprotected); }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        Counters.Increment(ref Counters.InternalErrors);
                        _log.PacketFailed(e, from);
                    }
                }
                FlushTouched(now);
                TakeWakes(wakes);
            }
            Wake(wakes);
        }
    }

    /// <summary>One packet through the receive loop's path (§3.3, §4.3): the fuzz tests' entry. Takes <see cref="Gate"/> itself.</summary>
    internal void HandlePacket(Span<byte> packet, SocketAddress from)
    {
        var kind = Classify(packet);
        if (kind == Inbound.Exchange) { OnExchange(packet, from); return; }
        var wakes = new List<TaskCompletionSource>();
        lock (Gate)
        {
            _inBatch = true;
            try
            {
                if (kind == Inbound.Malformed) Counters.Increment(ref Counters.Malformed);
                else OnPacket(packet, from, Now(), kind == Inbound.Unprotected);
                FlushTouched(Now());
            }
            finally { TakeWakes(wakes); }
        }
        Wake(wakes);
    }

    /// <summary>Stream readers and writers that a receive batch made ready, woken once it is handled; guarded by <see cref="Gate"/>.</summary>
    private readonly List<TaskCompletionSource> _wakes = [];
    private bool _inBatch;

    /// <summary>
    /// Wakes <paramref name="waiter"/> (and clears it) after the receive batch being handled, outside the lock;
    /// at once when no batch is being handled. Caller holds <see cref="Gate"/>.
    /// </summary>
    internal void WakeAfterBatch(ref TaskCompletionSource? waiter)
    {
        var w = waiter;
        if (w is null) return;
        waiter = null;
        if (_inBatch) _wakes.Add(w);
        else w.TrySetResult();
    }

    /// <summary>Moves the batch's wakes to <paramref name="into"/>. Caller holds <see cref="Gate"/>.</summary>
    private void TakeWakes(List<TaskCompletionSource> into)
    {
        _inBatch = false;
        into.AddRange(_wakes);
        _wakes.Clear();
    }

    private static void Wake(List<TaskCompletionSource> wakes)
    {
        foreach (var w in wakes) w.TrySetResult();
        wakes.Clear();
    }

    private readonly List<RudConnection> _touched = [];

    /// <summary>Marks a connection to flush after the current receive batch. Caller holds <see cref="Gate"/>.</summary>
    internal void Touch(RudConnection conn)
    {
        if (conn.Touched) return;
        conn.Touched = true;
        _touched.Add(conn);
    }

    private void FlushTouched(long now)
    {
        foreach (var conn in _touched)
        {
            conn.Touched = false;
            try { conn.Flush(now); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Counters.Increment(ref Counters.InternalErrors);
                _log.ConnectionFailed(e, conn.LocalId);
                conn.CloseLocked(1, "internal error", sendClose: true);
            }
        }
        _touched.Clear();
    }

    private enum Inbound : byte { Malformed, Exchange, Unprotected, Protected }

    private readonly Inbound[] _kinds = new Inbound[UdpReceiver.Batch];

    /// <summary>
    /// The receive loop's first look at a packet (§3.3), without the lock: a responder unprotects the header
    /// with its own key; an Exchange or initiator Complete (stream identifier 0, a valid handshake header) is
    /// unprotected whole and goes to <see cref="OnExchange"/>; anything else is routed under the lock.
    /// </summary>
    private Inbound Classify(Span<byte> p)
    {
        if (p.Length < HeaderProtection.HeaderSize + HeaderProtection.SampleSize + 1 || p.Length > RudWire.MaxReceiveSize) return Inbound.Malformed;
        if (_hp is null) return Inbound.Protected;
        _hp.Mask(p);
        if (RudWire.ReadId(p) == 0 && RudWire.TryReadHandshakeHeader(p, out _, out byte type) && type is PacketType.Exchange or PacketType.InitiatorComplete
            && p.Length >= RudWire.HandshakeSize)
        {
            _hp.Crypt(p[^HeaderProtection.SampleSize..], p[RudWire.HandshakeHeaderSize..^RudWire.RepresentativeTail]);
            return Inbound.Exchange;
        }
        return Inbound.Unprotected;
    }

    /// <summary>Unprotects a handshake packet's body (§3.3) whose header is already unprotected; false when the header is not a handshake header.</summary>
    private static bool UnprotectHandshakeBody(HeaderProtection hp, Span<byte> p, bool fromInitiator)
    {
        if (!RudWire.TryReadHandshakeHeader(p, out _, out byte type)) return false;
        int tail = RudWire.TailSize(type, fromInitiator);
        if (p.Length < RudWire.HandshakeHeaderSize + tail) return false;
        hp.Crypt(p[^HeaderProtection.SampleSize..], p[RudWire.HandshakeHeaderSize..^tail]);
        return true;
    }

    /// <summary>Protects a handshake packet built in the clear (§3.3): the body, then the header.</summary>
    internal static void ProtectHandshake(HeaderProtection hp, Span<byte> p, bool fromInitiator)
    {
        int tail = RudWire.TailSize(p[RudWire.IdSize], fromInitiator);
        hp.Crypt(p[^HeaderProtection.SampleSize..], p[RudWire.HandshakeHeaderSize..^tail]);
        hp.Mask(p);
    }

    /// <summary>
    /// Routes one packet (§3); everything unusable is dropped and counted (§10). <paramref name="unprotected"/>:
    /// the receive loop already unprotected its header with this responder's key (§3.3).
    /// </summary>
    internal void OnPacket(Span<byte> p, SocketAddress from, long now, bool unprotected)
    {
        RudConnection? conn = null;
        if (unprotected)
        {
            if (_connections.TryGetValue(RudWire.ReadId(p), out var c) && !c.IsInitiator) conn = c;
            else _hp!.Mask(p); // not ours under this key: protected again, for the other keys
        }
        if (conn is null)
        {
            // Connections this endpoint initiated: each responder key in use (usually one).
            foreach (var hp in _initiatorProtections.Values)
            {
                hp.Mask(p);
                if (_connections.TryGetValue(RudWire.ReadId(p), out var c) && c.IsInitiator && c.Hp == hp) { conn = c; break; }
                hp.Mask(p);
            }
        }
        if (conn is null)
        {
            // First contact (§4.2): a Hello under the well-known key.
            if (Options.AllowFirstContact && _staticPublic is not null)
            {
                FirstContactProtection.Mask(p);
                if (RudWire.ReadId(p) == 0 && UnprotectHandshakeBody(FirstContactProtection, p, fromInitiator: true) && p[RudWire.IdSize] == PacketType.Hello)
                {
                    OnHello(p, from, now);
                    return;
                }
            }
            Counters.Increment(ref Counters.UnknownId);
            return;
        }
        if (conn.IsInitiator && !conn.IsEstablished)
        {
            if (p[RudWire.IdSize] is PacketType.Data or PacketType.DataPhase1) Counters.Increment(ref Counters.NoKeys);
            else if (!UnprotectHandshakeBody(conn.Hp, p, fromInitiator: false)) Counters.Increment(ref Counters.Malformed);
            else OnInitiatorHandshake(conn, p, now);
            return;
        }
        if (p[RudWire.IdSize] is not (PacketType.Data or PacketType.DataPhase1))
        {
            // A late handshake packet after establishment: nothing to do.
            Counters.Increment(ref Counters.HandshakeDropped);
            return;
        }
        // What the packet made due goes out once the whole batch is handled (FlushTouched, §9.4):
        // one acknowledgement and one segmented send per batch, not per packet.
        conn.OnDataPacket(p, from, now);
    }

    // ---- packets out ----

    internal void SendTo(ReadOnlySpan<byte> packet, SocketAddress to)
    {
        _batch.Send(_socket); // keep the order of what was batched before
        try { _socket.SendTo(packet, SocketFlags.None, to); }
        catch (SocketException) { Counters.Increment(ref Counters.SendErrors); }
        catch (ObjectDisposedException) { Counters.Increment(ref Counters.SendErrors); }
    }

    /// <summary>Room for one packet to <paramref name="to"/> in the send batch (§9.4), written in place; <see cref="CommitPacket"/> adds it. Caller holds <see cref="Gate"/>.</summary>
    internal Span<byte> ReservePacket(SocketAddress to) => _batch.Reserve(_socket, to);

    /// <summary>Adds the packet written into <see cref="ReservePacket"/>'s span; <see cref="SendBatch"/> sends it.</summary>
    internal void CommitPacket(int length) => _batch.Commit(_socket, length);

    /// <summary>Sends the batched packets. Caller holds <see cref="Gate"/>.</summary>
    internal void SendBatch() => _batch.Send(_socket);

    /// <summary>Asks the driver loop for a turn (a stream has data, a frame is queued).</summary>
    internal void RequestFlush(RudConnection _)
    {
        if (Interlocked.Exchange(ref _flushRequested, 1) == 1) return;
        try { _wake.Release(); }
        catch (SemaphoreFullException) { }
        catch (ObjectDisposedException) { }
    }

    private async Task DriveAsync()
    {
        await Task.Yield();
        while (!_stop.IsCancellationRequested)
        {
            long wait;
            lock (Gate)
            {
                Volatile.Write(ref _flushRequested, 0);
                long now = Now();
                long next = now + 1_000_000;
                _iteration.Clear();
                _iteration.AddRange(_connections.Values);
                foreach (var conn in _iteration)
                {
                    try
                    {
                        if (conn.IsInitiator && !conn.IsEstablished && !conn.IsClosed)
                        {
                            if (now >= conn.HandshakeDeadline)
                            {
                                Counters.Increment(ref Counters.HandshakesFailed);
                                conn.FailHandshake($"no answer from {ToEndPoint(conn.Peer)} within {Options.HandshakeTimeout.TotalSeconds:0.#} s");
                                continue;
                            }
                            if (now >= conn.HandshakeResendAt)
                            {
                                SendTo(conn.HandshakePacket.AsSpan(0, conn.HandshakeLength), conn.Peer);
                                conn.HandshakeInterval *= 2;
                                conn.HandshakeResent = true;
                                conn.HandshakeResendAt = now + conn.HandshakeInterval;
                            }
                        }
                        conn.OnTimer(now);
                        conn.Flush(now);
                        next = Math.Min(next, conn.NextWake(now));
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        Counters.Increment(ref Counters.InternalErrors);
                        _log.ConnectionFailed(e, conn.LocalId);
                        conn.CloseLocked(1, "internal error", sendClose: true);
                    }
                }
                if (now >= _nextPrune)
                {
                    _nextPrune = now + 1_000_000;
                    _replay.Prune(WallMs());
                    _handshakeLoad.Prune(now);
                }
                wait = next - now;
            }
            if (Volatile.Read(ref _flushRequested) == 1) continue;
            int ms = (int)Math.Clamp((wait + 999) / 1000, 1, 1000);
            try { await _wake.WaitAsync(ms, _stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }
}
