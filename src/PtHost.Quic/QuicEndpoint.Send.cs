using System.Net;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Packets out: what each connection has to write, batched with UDP GSO.</summary>
public sealed unsafe partial class QuicEndpoint
{
    // ---- packets out ----

    internal void Send(QuicConnection c, ReadOnlySpan<byte> packet) => SendRaw(packet, c.RemoteSocketAddress);

    private void SendRaw(ReadOnlySpan<byte> packet, SocketAddress to)
    {
        fixed (byte* p = packet)
        fixed (byte* name = to.Buffer.Span)
            SendPackets(p, packet.Length, packet.Length, name, to.Size);
    }

    /// <summary>The batch so far leaves for its destination (the path ngtcp2 wrote it for).</summary>
    private void SendBatchTo(int length, int segment)
    {
        if (length > 0) SendPackets(SendBatch, length, segment, BatchRemote, _batchRemoteLen);
    }

    /// <summary>Write every packet the connection has ready: stream data, datagrams, ACKs, control frames.</summary>
    private void Flush(QuicConnection c)
    {
        if (c.State >= QuicConnection.ConnState.Closing) return;
        c.ProcessStreamWork();
        if (c.LocalStreamsExtended)
        {
            c.LocalStreamsExtended = false;
            var n = c.PendingOpens.Count;
            for (var i = 0; i < n && c.PendingOpens.TryDequeue(out var p); i++)
                if (!c.TryOpen(p.Bidi, p.Tcs)) c.PendingOpens.Enqueue(p);
        }
        if (c.State == QuicConnection.ConnState.Established) c.UpdateDatagramSize();
        var ts = Now();
        var conn = c.Conn;
        // Packets are written back to back into the batch; a run of equal-sized packets (the
        // last may be shorter) leaves in one GSO sendmsg.
        int batchLen = 0, segment = 0, segments = 0;
        for (var packets = 0; packets < 4096; packets++)
        {
            nint written;
            var buf = SendBatch + batchLen;
            if (c.State == QuicConnection.ConnState.Established && c.DatagramsOut.TryPeek(out var d))
            {
                int accepted = 0;
                fixed (byte* dp = d.Buffer)
                {
                    *(nint*)(Vecs + Layout.Vec.Base) = (nint)dp;
                    *(nuint*)(Vecs + Layout.Vec.Len) = (nuint)d.Length;
                    written = Ngtcp2.ConnWritevDatagram(conn, WritePath, 1, PktInfo, buf, MaxPacketSize, &accepted, Ngtcp2.WriteDatagramFlagMore, 0, Vecs, 1, ts);
                }
                // Not accepted into a packet that went out full of other frames: retry in the
                // next packet, twice at most; unsendable (too large, peer has no datagrams): drop.
                if (accepted != 0 || written is Ngtcp2.ErrInvalidArgument or Ngtcp2.ErrInvalidState || (written > 0 && ++c.DatagramRetries > 2))
                {
                    c.DatagramsOut.TryDequeue(out _);
                    c.DatagramRetries = 0;
                    c.DatagramDequeued(d.Buffer);
                    if (accepted == 0) Interlocked.Increment(ref c.DatagramsDropped);
                }
                if (written == Ngtcp2.ErrWriteMore || written is Ngtcp2.ErrInvalidArgument or Ngtcp2.ErrInvalidState) continue;
            }
            else
            {
                QuicStream? s = null;
                while (c.SendQueue.TryPeek(out var head))
                {
                    if (!head.Closed && !head.Blocked && head.HasSendWork) { s = head; break; }
                    c.SendQueue.Dequeue();
                    head.InSendQueue = false;
                }
                nint datalen = -1;
                if (s is null)
                {
                    written = Ngtcp2.ConnWritevStream(conn, WritePath, 1, PktInfo, buf, MaxPacketSize, &datalen, Ngtcp2.WriteStreamFlagMore, -1, null, 0, ts);
                }
                else
                {
                    var cnt = s.BuildVecs(Vecs, MaxVecs, out var total, out var fin);
                    var flags = Ngtcp2.WriteStreamFlagMore | (fin ? Ngtcp2.WriteStreamFlagFin : 0);
                    written = Ngtcp2.ConnWritevStream(conn, WritePath, 1, PktInfo, buf, MaxPacketSize, &datalen, flags, s.Id, Vecs, (nuint)cnt, ts);
                    if (datalen >= 0) s.OnSent(datalen, fin, total);
                    switch (written)
                    {
                        case Ngtcp2.ErrStreamDataBlocked:
                            s.Blocked = true;
                            c.SendQueue.Dequeue();
                            s.InSendQueue = false;
                            continue;
                        case Ngtcp2.ErrStreamShutWr:
                        case Ngtcp2.ErrStreamNotFound:
                            c.SendQueue.Dequeue();
                            s.InSendQueue = false;
                            s.OnWriteAborted(new QuicStreamAbortedException("stream no longer writable"));
                            continue;
                    }
                    if (!s.HasSendWork || written > 0)
                    {
                        // Round robin: the stream goes to the back (or leaves when it has nothing left).
                        c.SendQueue.Dequeue();
                        s.InSendQueue = false;
                        if (s.HasSendWork)
                        {
                            s.InSendQueue = true;
                            c.SendQueue.Enqueue(s);
                        }
                    }
                }
                if (written == Ngtcp2.ErrWriteMore) continue;
            }
            if (written < 0)
            {
                SendBatchTo(batchLen, segment);
                OnFatal(c, (int)written);
                return;
            }
            if (written == 0) break;
            var size = (int)written;
            // Each packet goes where ngtcp2 says (the path it filled in): a PATH_CHALLENGE or a
            // packet limited by anti-amplification may be for another path than the batch's.
            var toLen = (int)*(uint*)(WritePath + Layout.Path.Remote + Layout.Addr.AddrLen);
            var to = new ReadOnlySpan<byte>(WriteRemote, Math.Clamp(toLen, 0, 128));
            if (segments > 0 && (size > segment || !to.SequenceEqual(new ReadOnlySpan<byte>(BatchRemote, _batchRemoteLen))))
            {
                // Larger than the run's segment size (a path MTU probe), or for another path: the run leaves first.
                SendBatchTo(batchLen, segment);
                Buffer.MemoryCopy(buf, SendBatch, SendBatchCapacity, size);
                batchLen = segments = 0;
            }
            if (segments == 0)
            {
                segment = size;
                to.CopyTo(new Span<byte>(BatchRemote, 128));
                _batchRemoteLen = to.Length;
            }
            batchLen += size;
            segments++;
            if (size < segment || segments == MaxGsoSegments || batchLen + MaxPacketSize > MaxGsoBytes)
            {
                SendBatchTo(batchLen, segment);
                batchLen = segments = 0;
            }
        }
        SendBatchTo(batchLen, segment);
        Ngtcp2.ConnUpdatePktTxTime(conn, ts);
    }
}
