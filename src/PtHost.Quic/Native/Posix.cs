using System.Runtime.InteropServices;

namespace PtHost.Quic.Native;

/// <summary>
/// The libc calls the endpoint's I/O thread makes on its UDP socket: recvmsg/sendmsg with
/// control messages (UDP generic segmentation offload on send, UDP GRO on receive), ppoll with
/// a nanosecond timeout, and an eventfd to wake the thread. Linux LP64 layouts (x86-64 and
/// arm64 share them): <c>struct msghdr</c> is 56 bytes, <c>struct cmsghdr</c> 16, <c>struct pollfd</c> 8.
/// </summary>
internal static unsafe partial class Posix
{
    private const string Libc = "libc";

    public const int SolUdp = 17, UdpSegment = 103, UdpGro = 104;
    public const int MsgDontWait = 0x40;
    public const short PollIn = 0x1, PollOut = 0x4;
    public const int EIntr = 4, EAgain = 11, EIo = 5, EInval = 22, EMsgSize = 90, ENoProtoOpt = 92, EOpNotSupp = 95;
    public const int EfdNonBlock = 0x800, EfdCloexec = 0x80000;

    public static class MsgHdr { public const int Size = 56, Name = 0, NameLen = 8, Iov = 16, IovLen = 24, Control = 32, ControlLen = 40, Flags = 48; }
    public static class CmsgHdr { public const int Size = 16, Len = 0, Level = 8, Type = 12, Data = 16; }
    public static class PollFd { public const int Size = 8, Fd = 0, Events = 4, REvents = 6; }

    /// <summary>CMSG_SPACE(n): header plus data rounded up to 8 bytes.</summary>
    public static int CmsgSpace(int dataLength) => CmsgHdr.Size + ((dataLength + 7) & ~7);

    [LibraryImport(Libc, EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint RecvMsg(int fd, byte* msg, int flags);

    [LibraryImport(Libc, EntryPoint = "sendmsg", SetLastError = true)]
    public static partial nint SendMsg(int fd, byte* msg, int flags);

    [LibraryImport(Libc, EntryPoint = "ppoll", SetLastError = true)]
    public static partial int PPoll(byte* fds, nuint count, long* timespec, nint sigmask);

    [LibraryImport(Libc, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, byte* value, uint length);

    [LibraryImport(Libc, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport(Libc, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport(Libc, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint count);

    [LibraryImport(Libc, EntryPoint = "close")]
    public static partial int Close(int fd);
}
