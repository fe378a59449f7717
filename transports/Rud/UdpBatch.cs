using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using static PtHost.Net.Native.Libc;

namespace PtHost.Transports.Rud;

/// <summary>
/// Packets bound for one peer, sent with one sendmsg(2) and UDP generic segmentation offload
/// (UDP_SEGMENT, Linux ≥ 4.18): the kernel cuts the buffer into datagrams of the first packet's
/// size (the last may be shorter), so a burst of full data packets costs one system call and one
/// trip through the IP stack instead of one per packet (spec/rud.md §9.4). Where GSO is refused
/// (another OS, an old kernel) the batch falls back to one send per packet for good. Not
/// thread-safe: the endpoint's lock serialises every use.
/// </summary>
internal sealed unsafe class UdpBatch
{
    /// <summary>At most this many datagrams per send (the kernel allows 64 and 64 KiB in total).</summary>
    public const int MaxSegments = 44;

    private readonly byte[] _buffer = GC.AllocateUninitializedArray<byte>(MaxSegments * RudWire.MaxReceiveSize, pinned: true);
    private readonly RudCounters _counters;
    private int _count, _bytes, _segment;
    private bool _closed;
    private SocketAddress? _peer;
    private bool _gso = OperatingSystem.IsLinux();

    public UdpBatch(RudCounters counters) => _counters = counters;

    /// <summary>Whether the last sends went out with GSO (false once the kernel refused it).</summary>
    public bool UsesGso => _gso;

    /// <summary>
    /// Room for the next packet to <paramref name="to"/> at the end of the batch (sent first when
    /// full or bound elsewhere); the caller writes the packet there and calls <see cref="Commit"/>.
    /// </summary>
    public Span<byte> Reserve(Socket socket, SocketAddress to)
    {
        if (_count > 0 && (_closed || _count == MaxSegments || !to.Equals(_peer))) Send(socket);
        if (_count == 0) _peer = to;
        return _buffer.AsSpan(_bytes, RudWire.MaxReceiveSize);
    }

    /// <summary>Adds the packet of <paramref name="length"/> bytes written into <see cref="Reserve"/>'s span.</summary>
    public void Commit(Socket socket, int length)
    {
        if (_count > 0 && length > _segment)
        {
            // Longer than the batch's segment: it cannot join. The others go now and it moves to the front.
            int at = _bytes;
            var peer = _peer;
            Send(socket);
            _buffer.AsSpan(at, length).CopyTo(_buffer);
            _peer = peer;
        }
        if (_count == 0)
        {
            _segment = length;
            _closed = false;
        }
        _bytes += length;
        _count++;
        // A shorter packet can only be a batch's last segment.
        if (length < _segment) _closed = true;
    }

    /// <summary>Sends what is batched.</summary>
    public void Send(Socket socket)
    {
        if (_count == 0) return;
        try
        {
            // A lone packet (an acknowledgement, most often) takes the same raw sendmsg without the
            // UDP_SEGMENT cmsg: the managed Socket.SendTo path costs more per call.
            if ((_count > 1 && !_gso) || !TrySend(socket, segmented: _count > 1)) SendEach(socket);
        }
        finally
        {
            _count = 0;
            _bytes = 0;
            _peer = null;
            _closed = false;
        }
    }

    private void SendEach(Socket socket)
    {
        for (int at = 0; at < _bytes; at += _segment)
        {
            int len = Math.Min(_segment, _bytes - at);
            try { socket.SendTo(_buffer.AsSpan(at, len), SocketFlags.None, _peer!); }
            catch (SocketException) { _counters.Increment(ref _counters.SendErrors); }
            catch (ObjectDisposedException) { _counters.Increment(ref _counters.SendErrors); return; }
        }
    }

    /// <summary>One sendmsg, with UDP_SEGMENT when <paramref name="segmented"/>; false when it did not go out (the caller sends packet by packet).</summary>
    private bool TrySend(Socket socket, bool segmented)
    {
        bool added = false;
        var handle = socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            var cmsg = new SegmentCmsg { Length = (nuint)(sizeof(nuint) + 2 * sizeof(int) + sizeof(ushort)), Level = SolUdp, Type = UdpSegment, Segment = (ushort)_segment };
            fixed (byte* data = _buffer)
            fixed (byte* name = _peer!.Buffer.Span)
            {
                var iov = new IoVec { Base = data, Length = (nuint)_bytes };
                var msg = new MsgHdr { Name = name, NameLength = (uint)_peer.Size, Iov = &iov, IovLength = 1 };
                if (segmented)
                {
                    msg.Control = (byte*)&cmsg;
                    msg.ControlLength = (nuint)sizeof(SegmentCmsg);
                }
                for (int attempt = 0; attempt < 3; attempt++)
                {
                    nint sent = SendMsg(fd, &msg, 0);
                    if (sent >= 0) return true;
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == EIntr) continue;
                    // A full send buffer on the non-blocking socket: the per-packet path waits for room.
                    if (errno == EAgain) return false;
                    // No GSO here: per packet from now on. Other errors (a route, an ICMP report) are
                    // left to the per-packet path, which counts them.
                    if (segmented && errno is EIo or EInval or ENoProtoOpt or EOpNotSupp) _gso = false;
                    return false;
                }
                return false;
            }
        }
        catch (ObjectDisposedException) { return true; }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }
}
