using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using static PtHost.Net.Native.Libc;

namespace PtHost.Net.Udp;

/// <summary>
/// Reads up to <see cref="Batch"/> datagrams per system call (recvmmsg(2), non-blocking) from a
/// .NET socket into pinned slots allocated once. <see cref="ReceiveAsync"/> waits for the next
/// ones with a zero-byte peek (the socket's own readiness wait, no thread of its own); a caller
/// with a receive thread of its own polls and calls <see cref="TryReceive"/> (RUD, spec/rud.md
/// §9.4). With the default slot size, the largest UDP payload, nothing is truncated. One reader at
/// a time.
/// </summary>
public sealed class DatagramBatchReceiver
{
    public const int DefaultBatch = 32;
    public const int DefaultSlotSize = 65536;
    private const int NameSize = 128; // sockaddr_storage

    private readonly int _slotSize;
    private readonly byte[] _data;
    private readonly byte[] _names;
    private readonly MMsgHdr[] _headers;
    private readonly IoVec[] _iov;

    public unsafe DatagramBatchReceiver(int batch = DefaultBatch, int slotSize = DefaultSlotSize)
    {
        Batch = batch;
        _slotSize = slotSize;
        _data = GC.AllocateUninitializedArray<byte>(batch * slotSize, pinned: true);
        _names = GC.AllocateUninitializedArray<byte>(batch * NameSize, pinned: true);
        _headers = GC.AllocateArray<MMsgHdr>(batch, pinned: true);
        _iov = GC.AllocateArray<IoVec>(batch, pinned: true);
        for (int i = 0; i < batch; i++)
        {
            _iov[i].Base = (byte*)Marshal.UnsafeAddrOfPinnedArrayElement(_data, 0) + i * slotSize;
            _iov[i].Length = (nuint)slotSize;
        }
    }

    /// <summary>Datagrams read at most per call.</summary>
    public int Batch { get; }

    /// <summary>Datagram <paramref name="i"/> of the last receive; valid until the next one.</summary>
    public Memory<byte> Packet(int i) => _data.AsMemory(i * _slotSize, (int)Math.Min(_headers[i].Length, (uint)_slotSize));

    /// <summary>Writes datagram <paramref name="i"/>'s source address into <paramref name="into"/> (the socket's address family).</summary>
    public void Source(int i, SocketAddress into)
    {
        int n = (int)Math.Min(_headers[i].Header.NameLength, (uint)Math.Min(NameSize, into.Buffer.Length));
        _names.AsSpan(i * NameSize, n).CopyTo(into.Buffer.Span);
        into.Size = n;
    }

    /// <summary>
    /// Waits for datagrams and reads what is queued, at most <see cref="Batch"/>; returns how many
    /// (at least one). Throws what the socket's wait throws (cancellation, disposal).
    /// </summary>
    public async ValueTask<int> ReceiveAsync(Socket socket, CancellationToken cancellationToken)
    {
        while (true)
        {
            int n = TryReceive(socket);
            if (n > 0) return n;
            if (n < 0) throw new ObjectDisposedException(nameof(Socket));
            try { await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.Peek, cancellationToken).ConfigureAwait(false); }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionRefused or SocketError.MessageSize
                                                or SocketError.HostUnreachable or SocketError.NetworkUnreachable)
            {
                // An ICMP error report: the next read goes on.
            }
        }
    }

    /// <summary>
    /// For a receive thread of its own: waits up to <paramref name="timeoutMs"/> in poll(2) (blocking this thread, no
    /// thread-pool hop), then reads what is queued, at most <see cref="Batch"/>. Returns how many; 0 on timeout or a
    /// transient error; -1 when the socket is closed. A short timeout lets the thread notice a stop.
    /// </summary>
    public unsafe int Receive(Socket socket, int timeoutMs)
    {
        bool added = false;
        var handle = socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            var pfd = new PollFd { Fd = (int)handle.DangerousGetHandle(), Events = PollIn };
            int ready = Poll(&pfd, 1, timeoutMs);
            if (ready <= 0) return 0;
            if ((pfd.Revents & PollNval) != 0) return -1;
        }
        catch (ObjectDisposedException) { return -1; }
        finally
        {
            if (added) handle.DangerousRelease();
        }
        return TryReceive(socket);
    }

    /// <summary>recvmmsg(2) without waiting: how many were read, 0 when none is queued (or a transient error), -1 when the socket is closed.</summary>
    public unsafe int TryReceive(Socket socket)
    {
        bool added = false;
        var handle = socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            fixed (MMsgHdr* headers = _headers)
            fixed (IoVec* iov = _iov)
            fixed (byte* names = _names)
            {
                for (int i = 0; i < Batch; i++)
                {
                    headers[i].Header = new MsgHdr { Name = names + i * NameSize, NameLength = NameSize, Iov = iov + i, IovLength = 1 };
                    headers[i].Length = 0;
                }
                int n = RecvMMsg((int)handle.DangerousGetHandle(), headers, (uint)Batch, MsgDontWait, null);
                if (n >= 0) return n;
                int errno = Marshal.GetLastPInvokeError();
                return errno is EBadF or ENotSock ? -1 : 0;
            }
        }
        catch (ObjectDisposedException) { return -1; }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }
}

/// <summary>
/// Collects datagrams for one socket and sends them with one sendmmsg(2) each
/// <see cref="Batch"/> (non-blocking; what the socket cannot take now goes through the socket's
/// own asynchronous send). Payloads stay where they are (pointers into the caller's array, pinned
/// only for the call); addresses are copied into pinned slots. Consecutive datagrams of one size
/// (the last of a run may be shorter) to one address go as one message with UDP_SEGMENT (UDP GSO,
/// udp(7)): the kernel routes and builds the run once. One sender at a time.
/// </summary>
public sealed class DatagramBatchSender
{
    public const int Batch = 32;
    /// <summary>Bytes of one GSO message at most (under the 65,507 an IPv4 datagram can carry).</summary>
    public const int MaxSegmentedBytes = 65000;
    private const int NameSize = 28; // sockaddr_in6
    private readonly SegmentCmsg[] _control = GC.AllocateArray<SegmentCmsg>(Batch, pinned: true);
    private readonly int[] _messageEnd = new int[Batch];
    private bool _segmentation = true;

    private readonly byte[] _names = GC.AllocateUninitializedArray<byte>(Batch * NameSize, pinned: true);
    private readonly MMsgHdr[] _headers = GC.AllocateArray<MMsgHdr>(Batch, pinned: true);
    private readonly IoVec[] _iov = GC.AllocateArray<IoVec>(Batch, pinned: true);
    private readonly (int Offset, int Length, int NameLength)[] _items = new (int, int, int)[Batch];
    private readonly SocketAddress?[] _addresses = new SocketAddress?[Batch];
    private byte[]? _array;
    private Socket? _socket;

    /// <summary>Datagrams queued now.</summary>
    public int Count { get; private set; }

    /// <summary>Datagrams the kernel refused (an ICMP error report, no route): lost as UDP would lose them.</summary>
    public long Failed { get; private set; }

    /// <summary>Datagrams handed to the kernel.</summary>
    public long Sent { get; private set; }

    /// <summary>Messages sent with UDP_SEGMENT, each a run of datagrams (0 where the kernel has no UDP GSO).</summary>
    public long SegmentedMessages { get; private set; }

    private readonly bool _yieldAfterBursts;

    /// <param name="yieldAfterBursts">
    /// True for a sender whose datagrams go to the one application the host fronts (a bound server's target, the
    /// client's answers to its application): a flush that handed at least <see cref="YieldAfter"/> datagrams to the
    /// kernel then ends with sched_yield(2) (spec/turn.md §5.4). Such an application usually runs on this machine:
    /// the burst is queued on its socket inside the send call and wakes it, often on this CPU, and a sender that goes
    /// straight on to its next read and burst keeps the CPU while the application's buffer (212,992 bytes by default,
    /// some 50 to 90 datagrams) overflows. Measured with OpenVPN behind a transparent UDP server: drops at OpenVPN's
    /// socket 25,000 → 7,000 per run, throughput 0.58 → 0.82 of direct. Not for a free server's peers: they are
    /// elsewhere, and a relay flooded by an open-loop sender gives the CPU to the flood (TURN at full rate fell from
    /// 0.42 to 0.28 of direct with the yield). A yield with nothing else runnable returns at once.
    /// </param>
    public DatagramBatchSender(bool yieldAfterBursts = false) => _yieldAfterBursts = yieldAfterBursts;

    /// <summary>The fewest datagrams one flush hands to the kernel for it to yield (when the sender yields at all).</summary>
    public const int YieldAfter = 4;

    /// <summary>Flushes that ended by yielding the CPU (<see cref="YieldAfter"/>).</summary>
    public long Yields { get; private set; }

    /// <summary>
    /// True when a datagram for <paramref name="socket"/> whose payload lies in <paramref name="array"/>
    /// can join the batch; otherwise flush first.
    /// </summary>
    public bool CanAdd(Socket socket, byte[] array) => Count == 0 || (Count < Batch && ReferenceEquals(socket, _socket) && ReferenceEquals(array, _array));

    /// <summary>Queues <paramref name="payload"/> (a slice of <paramref name="array"/>) to <paramref name="to"/> (null: a connected socket).</summary>
    public void Add(Socket socket, byte[] array, int offset, int length, SocketAddress? to)
    {
        if (!CanAdd(socket, array)) throw new InvalidOperationException("flush the batch first");
        _socket = socket;
        _array = array;
        int nameLength = 0;
        if (to is not null)
        {
            nameLength = Math.Min(to.Size, NameSize);
            to.Buffer.Span[..nameLength].CopyTo(_names.AsSpan(Count * NameSize));
        }
        _addresses[Count] = to;
        _items[Count++] = (offset, length, nameLength);
    }

    /// <summary>Sends what is queued; the payloads' array may be reused once this completes.</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        int done = 0;
        long sentBefore = Sent;
        try
        {
            while (done < Count)
            {
                int sent = TrySend(done);
                if (sent > 0)
                {
                    done += sent;
                    Sent += sent;
                    continue;
                }
                // The socket cannot take more now (or refused this one): send the next through .NET and go on.
                var (offset, length, _) = _items[done];
                var payload = _array.AsMemory(offset, length);
                try
                {
                    if (_addresses[done] is { } to) await _socket!.SendToAsync(payload, SocketFlags.None, to, cancellationToken).ConfigureAwait(false);
                    else await _socket!.SendAsync(payload, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                    Sent++;
                }
                catch (SocketException)
                {
                    Failed++; // ICMP errors (refused, unreachable) surface here on Linux; UDP goes on
                }
                done++;
            }
            if (_yieldAfterBursts && Sent - sentBefore >= YieldAfter)
            {
                Thread.Yield();
                Yields++;
            }
        }
        finally
        {
            Count = 0;
            _socket = null;
            _array = null;
            Array.Clear(_addresses);
        }
    }

    /// <summary>sendmmsg(2) of the queued datagrams from <paramref name="first"/> on, without waiting: how many went; 0 when none could.</summary>
    private unsafe int TrySend(int first)
    {
        var handle = _socket!.SafeHandle;
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            fixed (byte* data = _array)
            fixed (byte* names = _names)
            fixed (MMsgHdr* headers = _headers)
            fixed (IoVec* iov = _iov)
            fixed (SegmentCmsg* control = _control)
            {
                int n = Count - first, messages = 0;
                for (int i = 0; i < n;)
                {
                    var (offset, length, nameLength) = _items[first + i];
                    byte* name = nameLength > 0 ? names + (first + i) * NameSize : null;
                    // A run for one GSO message: same address, same size; a shorter datagram ends it.
                    int end = i + 1, total = length;
                    while (_segmentation && end < n)
                    {
                        var next = _items[first + end];
                        if (next.Length > length || next.Length == 0 || total + next.Length > MaxSegmentedBytes || next.NameLength != nameLength
                            || !_names.AsSpan((first + end) * NameSize, nameLength).SequenceEqual(_names.AsSpan((first + i) * NameSize, nameLength)))
                            break;
                        total += next.Length;
                        end++;
                        if (next.Length < length) break;
                    }
                    for (int k = i; k < end; k++)
                        iov[k] = new IoVec { Base = data + _items[first + k].Offset, Length = (nuint)_items[first + k].Length };
                    var header = new MsgHdr { Name = name, NameLength = (uint)nameLength, Iov = iov + i, IovLength = (nuint)(end - i) };
                    if (end - i > 1)
                    {
                        control[messages] = new SegmentCmsg { Length = (nuint)(CmsgHdrLayout.Size + sizeof(ushort)), Level = SolUdp, Type = UdpSegment, Segment = (ushort)length };
                        header.Control = (byte*)(control + messages);
                        header.ControlLength = (nuint)CmsgSpace(sizeof(ushort));
                    }
                    headers[messages].Header = header;
                    headers[messages].Length = 0;
                    _messageEnd[messages++] = end;
                    i = end;
                }
                int sent = SendMMsg((int)handle.DangerousGetHandle(), headers, (uint)messages, MsgDontWait);
                if (sent > 0)
                {
                    for (int m = 0, start = 0; m < sent; start = _messageEnd[m++])
                        if (_messageEnd[m] - start > 1) SegmentedMessages++;
                    return _messageEnd[sent - 1];
                }
                if (sent < 0 && _messageEnd[0] > 1 && Marshal.GetLastPInvokeError() is EInval or EIo or ENoProtoOpt or EOpNotSupp)
                    _segmentation = false; // no UDP GSO here: datagrams go one per message from now on
                return 0;
            }
        }
        catch (ObjectDisposedException) { return 0; }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }
}
