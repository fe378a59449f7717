using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using static PtHost.Net.Native.Libc;

namespace PtHost.Transports.Rud;

/// <summary>
/// Reads up to <see cref="Batch"/> datagrams per system call (recvmmsg(2)) on the endpoint's own
/// receive thread, after poll(2) with a short timeout so the thread notices a stop; the endpoint
/// then handles the whole batch under one acquisition of its lock and sends what it made due
/// once (spec/rud.md §9.4). Buffers are allocated once, pinned.
/// </summary>
internal sealed unsafe class UdpReceiver
{
    public const int Batch = 32;
    private const int SlotSize = RudWire.MaxReceiveSize + 1; // one more, to see oversized datagrams
    private const int NameSize = 128; // sockaddr_storage

    private readonly byte[] _data = GC.AllocateUninitializedArray<byte>(Batch * SlotSize, pinned: true);
    private readonly byte[] _names = GC.AllocateUninitializedArray<byte>(Batch * NameSize, pinned: true);
    private readonly MMsgHdr[] _headers = GC.AllocateArray<MMsgHdr>(Batch, pinned: true);
    private readonly IoVec[] _iov = GC.AllocateArray<IoVec>(Batch, pinned: true);

    public UdpReceiver()
    {
        for (int i = 0; i < Batch; i++)
        {
            _iov[i].Base = (byte*)Marshal.UnsafeAddrOfPinnedArrayElement(_data, 0) + i * SlotSize;
            _iov[i].Length = SlotSize;
        }
    }

    /// <summary>The datagram <paramref name="i"/> of the last <see cref="Receive"/>.</summary>
    public Span<byte> Packet(int i) => _data.AsSpan(i * SlotSize, (int)Math.Min(_headers[i].Length, SlotSize));

    /// <summary>Writes datagram <paramref name="i"/>'s source address into <paramref name="into"/> (same address family as the socket).</summary>
    public void Source(int i, SocketAddress into)
    {
        int n = (int)Math.Min(_headers[i].Header.NameLength, (uint)Math.Min(NameSize, into.Buffer.Length));
        _names.AsSpan(i * NameSize, n).CopyTo(into.Buffer.Span);
        into.Size = n;
    }

    /// <summary>
    /// Waits up to <paramref name="timeoutMs"/> for datagrams and reads what is queued (at most
    /// <see cref="Batch"/>). Returns how many; 0 on timeout or a transient error; -1 when the
    /// socket is closed.
    /// </summary>
    public int Receive(Socket socket, int timeoutMs)
    {
        bool added = false;
        var handle = socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            var pfd = new PollFd { Fd = fd, Events = PollIn };
            int ready = Poll(&pfd, 1, timeoutMs);
            if (ready <= 0) return 0;
            if ((pfd.Revents & PollNval) != 0) return -1;
            fixed (MMsgHdr* headers = _headers)
            fixed (IoVec* iov = _iov)
            fixed (byte* names = _names)
            {
                for (int i = 0; i < Batch; i++)
                {
                    headers[i].Header = new MsgHdr { Name = names + i * NameSize, NameLength = NameSize, Iov = iov + i, IovLength = 1 };
                    headers[i].Length = 0;
                }
                int n = RecvMMsg(fd, headers, Batch, MsgDontWait, null);
                if (n >= 0) return n;
                int errno = Marshal.GetLastPInvokeError();
                return errno is EBadF or ENotSock ? -1 : 0; // EAGAIN, EINTR, an ICMP error report: nothing to read now
            }
        }
        catch (ObjectDisposedException) { return -1; }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }
}
