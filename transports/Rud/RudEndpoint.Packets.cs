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
        while (!_stop.IsCancellationRequested)
        {
            int n = receiver.Receive(socket, 100);
            if (n < 0) return;
            if (n == 0) continue;
            // Exchanges first, outside the lock (their key agreements must not hold up data packets, §4.3).
            for (int i = 0; i < n; i++)
            {
                var packet = receiver.Packet(i);
                if (!IsExchange(packet)) continue;
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
                long now = Now();
                for (int i = 0; i < n; i++)
                {
                    var packet = receiver.Packet(i);
                    if (packet.Length > RudWire.MaxReceiveSize) { Counters.Increment(ref Counters.Malformed); continue; }
                    if (IsExchange(packet)) continue;
                    receiver.Source(i, from);
                    try { OnPacket(packet, from, now); }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        Counters.Increment(ref Counters.InternalErrors);
                        _log.PacketFailed(e, from);
                    }
                }
                FlushTouched(now);
            }
        }
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

    /// <summary>Whether the receive loop hands <paramref name="p"/> to <see cref="OnExchange"/> (a responder's Exchange or initiator Complete).</summary>
    private bool IsExchange(ReadOnlySpan<byte> p) =>
        _staticPublic is not null && p.Length >= RudWire.IdSize + 2 && p.Length <= RudWire.MaxReceiveSize && RudWire.ReadId(p) == 0
        && p[RudWire.IdSize] is PacketType.Exchange or PacketType.InitiatorComplete;

    /// <summary>Routes one packet (§3); everything unusable is dropped and counted (§10).</summary>
    internal void OnPacket(ReadOnlySpan<byte> p, SocketAddress from, long now)
    {
        if (p.Length < RudWire.IdSize + 2) { Counters.Increment(ref Counters.Malformed); return; }
        ulong id = RudWire.ReadId(p);
        if (id == 0)
        {
            if (_staticPublic is null) { Counters.Increment(ref Counters.HandshakeDropped); return; }
            switch (p[RudWire.IdSize])
            {
                case PacketType.Hello: OnHello(p, from, now); break;
                case PacketType.Exchange:
                case PacketType.InitiatorComplete: OnExchange(p, from); break;
                default: Counters.Increment(ref Counters.Malformed); break;
            }
            return;
        }
        if (!_connections.TryGetValue(id, out var conn)) { Counters.Increment(ref Counters.UnknownId); return; }
        if (conn.IsInitiator && !conn.IsEstablished)
        {
            if (p[RudWire.IdSize] is PacketType.Data or PacketType.DataPhase1) Counters.Increment(ref Counters.NoKeys);
            else OnInitiatorHandshake(conn, p, now);
            return;
        }
        if (p[RudWire.IdSize] is not (PacketType.Data or PacketType.DataPhase1))
        {
            // A late handshake packet after establishment: nothing to do.
            Counters.Increment(ref Counters.HandshakeDropped);
            return;
        }
        conn.OnDataPacket(p, from, now);
        conn.Flush(now);
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
