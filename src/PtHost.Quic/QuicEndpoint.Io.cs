using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using PtHost.Net.Native;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>
/// The endpoint's I/O thread. One OS thread per endpoint owns the UDP socket and every ngtcp2
/// connection on it: it reads datagrams straight into native memory with recvmsg (UDP GRO
/// hands it up to 64 KiB of same-sized datagrams in one call), runs posted work, services
/// expiries and writes packets, which leave in batches of equal-sized segments through one
/// sendmsg with UDP_SEGMENT (generic segmentation offload). It sleeps in ppoll on the socket
/// and an eventfd, with a nanosecond timeout taken from ngtcp2's earliest expiry, so pacing
/// and loss timers fire when they are due rather than on a millisecond timer.
/// </summary>
public sealed unsafe partial class QuicEndpoint
{
    private const int RecvCapacity = 65536;
    private const int RecvControlSize = 64;
    private const int MaxDatagramsPerTurn = 64;
    /// <summary>A GSO send carries at most this many bytes (the UDP length field) and 64 segments.</summary>
    private const int MaxGsoBytes = 65000, MaxGsoSegments = 64;
    private const int SendBatchCapacity = MaxGsoBytes + MaxPacketSize;

    private int _fd;
    private int _eventFd = -1;
    private int _sleeping, _wakePending;
    private bool _gsoDisabled;
    private ulong _nextDeadline = ulong.MaxValue;
    private Thread? _thread;
    private readonly TaskCompletionSource _loopDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Thread-owned native I/O memory (one block, freed with the scratch).
    private byte* _io;
    private const int IoSize = RecvCapacity + 128 + RecvControlSize + Libc.MsgHdrLayout.Size + Layout.Vec.Size
        + SendBatchCapacity + Libc.MsgHdrLayout.Size + Layout.Vec.Size + 32 + 2 * Libc.PollFdLayout.Size + 16 + 8;
    private byte* RecvBuf => _io;
    private byte* RecvAddr => RecvBuf + RecvCapacity;
    private byte* RecvControl => RecvAddr + 128;
    private byte* RecvMsg => RecvControl + RecvControlSize;
    private byte* RecvIov => RecvMsg + Libc.MsgHdrLayout.Size;
    private byte* SendBatch => RecvIov + Layout.Vec.Size;
    private byte* SendMsg => SendBatch + SendBatchCapacity;
    private byte* SendIov => SendMsg + Libc.MsgHdrLayout.Size;
    private byte* SendControl => SendIov + Layout.Vec.Size;
    private byte* PollFds => SendControl + 32;
    private byte* TimeSpec => PollFds + 2 * Libc.PollFdLayout.Size;
    private byte* EventWord => TimeSpec + 16;

    private void StartIo()
    {
        _io = (byte*)NativeMemory.AllocZeroed(IoSize);
        _fd = (int)_socket.Handle;
        _eventFd = Libc.EventFd(0, Libc.EfdNonBlock | Libc.EfdCloexec);
        if (_eventFd < 0) throw new SocketException(Marshal.GetLastPInvokeError());
        int on = 1;
        // GRO is an optimisation: a kernel without it delivers datagrams one by one.
        if (Libc.SetSockOpt(_fd, Libc.SolUdp, Libc.UdpGro, (byte*)&on, sizeof(int)) != 0)
            _log.NoGro(LocalEndPoint, Marshal.GetLastPInvokeError());
        _thread = new Thread(RunLoop) { IsBackground = true, Name = "QUIC " + LocalEndPoint };
        _thread.Start();
    }

    private void FreeIo()
    {
        if (_eventFd >= 0) Libc.Close(_eventFd);
        _eventFd = -1;
        NativeMemory.Free(_io);
        _io = null;
    }

    /// <summary>After queueing work: wake the thread if it sleeps (Dekker pairing with <see cref="Sleep"/>).</summary>
    private void Wake()
    {
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _sleeping) == 0 || Interlocked.Exchange(ref _wakePending, 1) != 0) return;
        ulong one = 1;
        Libc.Write(_eventFd, (byte*)&one, 8);
    }

    private void WakeForShutdown()
    {
        ulong one = 1;
        Libc.Write(_eventFd, (byte*)&one, 8);
    }

    private void RunLoop()
    {
        var reader = _events.Reader;
        try
        {
            while (true)
            {
                for (var i = 0; i < 4096 && reader.TryRead(out var ev); i++)
                {
                    try { Handle(ev); }
                    catch (Exception e) { _log.EventFailed(e); }
                }
                if (reader.Completion.IsCompleted || _stop.IsCancellationRequested) break;
                bool more;
                try { more = ReceiveTurn(); }
                catch (Exception e)
                {
                    _log.ReceiveFailed(e);
                    more = false;
                }
                try { Service(); }
                catch (Exception e) { _log.ServiceFailed(e); }
                if (!more) Sleep();
            }
        }
        finally
        {
            foreach (var c in _connections.ToArray())
            {
                try
                {
                    c.Terminate(new QuicCloseInfo("endpoint closed", false, null), deleteNow: true);
                    DeleteConnection(c);
                }
                catch (Exception e) { _log.CleanUpFailed(e); }
            }
            _loopDone.TrySetResult();
        }
    }

    /// <summary>Waits for a datagram, posted work, or the next ngtcp2 expiry.</summary>
    private void Sleep()
    {
        Volatile.Write(ref _sleeping, 1);
        Interlocked.MemoryBarrier();
        if (_events.Reader.TryPeek(out _))
        {
            Volatile.Write(ref _sleeping, 0);
            return;
        }
        var fds = PollFds;
        *(int*)(fds + Libc.PollFdLayout.Fd) = _fd;
        *(short*)(fds + Libc.PollFdLayout.Events) = Libc.PollIn;
        *(short*)(fds + Libc.PollFdLayout.REvents) = 0;
        *(int*)(fds + Libc.PollFdLayout.Size + Libc.PollFdLayout.Fd) = _eventFd;
        *(short*)(fds + Libc.PollFdLayout.Size + Libc.PollFdLayout.Events) = Libc.PollIn;
        *(short*)(fds + Libc.PollFdLayout.Size + Libc.PollFdLayout.REvents) = 0;
        long* ts = null;
        if (_nextDeadline != ulong.MaxValue)
        {
            var now = Now();
            var wait = _nextDeadline <= now ? 0 : Math.Min(_nextDeadline - now, 60UL * 1_000_000_000);
            ts = (long*)TimeSpec;
            ts[0] = (long)(wait / 1_000_000_000);
            ts[1] = (long)(wait % 1_000_000_000);
        }
        var rv = Libc.PPoll(fds, 2, ts, 0);
        Volatile.Write(ref _sleeping, 0);
        if (rv > 0 && (*(short*)(fds + Libc.PollFdLayout.Size + Libc.PollFdLayout.REvents) & Libc.PollIn) != 0)
        {
            Volatile.Write(ref _wakePending, 0);
            Libc.Read(_eventFd, EventWord, 8);
        }
    }

    /// <summary>Reads what the socket has, up to <see cref="MaxDatagramsPerTurn"/> recvmsg calls;
    /// true when it stopped at that limit (more may be waiting).</summary>
    private bool ReceiveTurn()
    {
        var msg = RecvMsg;
        for (var i = 0; i < MaxDatagramsPerTurn; i++)
        {
            *(nint*)(RecvIov + Layout.Vec.Base) = (nint)RecvBuf;
            *(nuint*)(RecvIov + Layout.Vec.Len) = RecvCapacity;
            *(nint*)(msg + Libc.MsgHdrLayout.Name) = (nint)RecvAddr;
            *(uint*)(msg + Libc.MsgHdrLayout.NameLen) = 128;
            *(nint*)(msg + Libc.MsgHdrLayout.Iov) = (nint)RecvIov;
            *(nuint*)(msg + Libc.MsgHdrLayout.IovLen) = 1;
            *(nint*)(msg + Libc.MsgHdrLayout.Control) = (nint)RecvControl;
            *(nuint*)(msg + Libc.MsgHdrLayout.ControlLen) = RecvControlSize;
            *(int*)(msg + Libc.MsgHdrLayout.Flags) = 0;
            var n = Libc.RecvMsg(_fd, msg, Libc.MsgDontWait);
            if (n < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == Libc.EAgain) return false;
                if (errno == Libc.EIntr) continue;
                // ICMP errors surface here on UDP (ECONNREFUSED, EHOSTUNREACH …): the packet that
                // caused them is lost and QUIC recovers; keep reading.
                _log.ReceiveErrno(LocalEndPoint, errno);
                continue;
            }
            var segment = (int)n;
            var controlLen = (int)*(nuint*)(msg + Libc.MsgHdrLayout.ControlLen);
            for (var off = 0; off + Libc.CmsgHdrLayout.Size <= controlLen;)
            {
                var cm = RecvControl + off;
                var len = (int)*(nuint*)(cm + Libc.CmsgHdrLayout.Len);
                if (len < Libc.CmsgHdrLayout.Size) break;
                if (*(int*)(cm + Libc.CmsgHdrLayout.Level) == Libc.SolUdp && *(int*)(cm + Libc.CmsgHdrLayout.Type) == Libc.UdpGro && len >= Libc.CmsgHdrLayout.Size + 4)
                {
                    var gso = *(int*)(cm + Libc.CmsgHdrLayout.Data);
                    if (gso > 0) segment = gso;
                }
                off += (len + 7) & ~7;
            }
            var addrLen = (int)*(uint*)(msg + Libc.MsgHdrLayout.NameLen);
            var from = new ReadOnlySpan<byte>(RecvAddr, Math.Min(addrLen, 128));
            for (var off = 0; off < (int)n; off += segment)
                OnPacket(RecvBuf + off, Math.Min(segment, (int)n - off), from);
        }
        return true;
    }

    /// <summary>Sends <paramref name="length"/> bytes of equal-sized packets (the last may be
    /// shorter) to the sockaddr <paramref name="name"/>, as one GSO send when there are several.</summary>
    private void SendPackets(byte* data, int length, int segmentSize, byte* name, int nameLen)
    {
        if (length <= 0 || nameLen <= 0) return;
        if (length > segmentSize && _gsoDisabled)
        {
            for (var off = 0; off < length; off += segmentSize)
                SendPackets(data + off, Math.Min(segmentSize, length - off), segmentSize, name, nameLen);
            return;
        }
        var msg = SendMsg;
        {
            for (var attempt = 0; ; attempt++)
            {
                *(nint*)(SendIov + Layout.Vec.Base) = (nint)data;
                *(nuint*)(SendIov + Layout.Vec.Len) = (nuint)length;
                *(nint*)(msg + Libc.MsgHdrLayout.Name) = (nint)name;
                *(uint*)(msg + Libc.MsgHdrLayout.NameLen) = (uint)nameLen;
                *(nint*)(msg + Libc.MsgHdrLayout.Iov) = (nint)SendIov;
                *(nuint*)(msg + Libc.MsgHdrLayout.IovLen) = 1;
                *(int*)(msg + Libc.MsgHdrLayout.Flags) = 0;
                if (length > segmentSize)
                {
                    var cm = SendControl;
                    *(nuint*)(cm + Libc.CmsgHdrLayout.Len) = (nuint)(Libc.CmsgHdrLayout.Size + sizeof(ushort));
                    *(int*)(cm + Libc.CmsgHdrLayout.Level) = Libc.SolUdp;
                    *(int*)(cm + Libc.CmsgHdrLayout.Type) = Libc.UdpSegment;
                    *(ushort*)(cm + Libc.CmsgHdrLayout.Data) = (ushort)segmentSize;
                    *(nint*)(msg + Libc.MsgHdrLayout.Control) = (nint)cm;
                    *(nuint*)(msg + Libc.MsgHdrLayout.ControlLen) = (nuint)Libc.CmsgSpace(sizeof(ushort));
                }
                else
                {
                    *(nint*)(msg + Libc.MsgHdrLayout.Control) = 0;
                    *(nuint*)(msg + Libc.MsgHdrLayout.ControlLen) = 0;
                }
                if (Libc.SendMsg(_fd, msg, Libc.MsgDontWait) >= 0) return;
                var errno = Marshal.GetLastPInvokeError();
                if (errno == Libc.EIntr) continue;
                if (errno == Libc.EAgain && attempt < 3)
                {
                    WaitWritable();
                    continue;
                }
                if (length > segmentSize && errno is Libc.EIo or Libc.EInval or Libc.ENoProtoOpt or Libc.EOpNotSupp or Libc.EMsgSize)
                {
                    // The route's device cannot segment: fall back to one packet per call for good.
                    _log.NoGso(LocalEndPoint, errno);
                    _gsoDisabled = true;
                    SendPackets(data, length, segmentSize, name, nameLen);
                    return;
                }
                // A full buffer or an ICMP error loses these packets; QUIC recovery resends.
                _log.SendErrno(errno);
                return;
            }
        }
    }

    private void WaitWritable()
    {
        var fds = PollFds;
        *(int*)(fds + Libc.PollFdLayout.Fd) = _fd;
        *(short*)(fds + Libc.PollFdLayout.Events) = Libc.PollOut;
        *(short*)(fds + Libc.PollFdLayout.REvents) = 0;
        var ts = (long*)TimeSpec;
        ts[0] = 0;
        ts[1] = 5_000_000;
        Libc.PPoll(fds, 1, ts, 0);
    }
}
