using System.Runtime.InteropServices;

namespace PtHost.Net.Native;

/// <summary>
/// Every libc call of the tree, in one place: the batched UDP I/O of QUIC (src/PtHost.Quic) and RUD
/// (recvmsg/sendmsg with UDP GSO and GRO, recvmmsg, poll, ppoll, an eventfd), the splice relay
/// (splice, pipe2, fcntl), the descriptor limit (getrlimit, setrlimit), file checks (statx, geteuid),
/// and a few process and socket queries. Linux LP64 layouts (x86-64 and
/// arm64 share them): <c>struct msghdr</c> 56 bytes, <c>struct mmsghdr</c> 64, <c>struct cmsghdr</c>
/// 16, <c>struct pollfd</c> 8, <c>struct iovec</c> 16. The structs are for typed callers; the
/// offset classes (<see cref="MsgHdrLayout"/>, <see cref="CmsgHdrLayout"/>, <see cref="PollFdLayout"/>)
/// describe the same layouts for code that builds them in raw buffers.
/// </summary>
public static unsafe partial class Libc
{
    private const string Lib = "libc";

    // ---- constants -----------------------------------------------------------------------------

    /// <summary>Socket option level and names of UDP (udp(7)): GSO on send, GRO on receive.</summary>
    public const int SolUdp = 17, UdpSegment = 103, UdpGro = 104;

    /// <summary><c>MSG_DONTWAIT</c>; <c>MSG_TRUNC</c> in a received message's flags: it did not fit.</summary>
    public const int MsgDontWait = 0x40, MsgTrunc = 0x20;

    /// <summary>poll(2) events.</summary>
    public const short PollIn = 0x1, PollOut = 0x4, PollNval = 0x20;

    /// <summary>errno values (asm-generic).</summary>
    public const int EPerm = 1, EIntr = 4, EIo = 5, EBadF = 9, EAgain = 11, ENoMem = 12, EInval = 22, ENFile = 23, EMFile = 24,
        ENotSock = 88, EMsgSize = 90, ENoProtoOpt = 92, EOpNotSupp = 95;

    /// <summary>getrlimit(2)/setrlimit(2): the descriptor limit.</summary>
    public const int RLimitNoFile = 7;

    /// <summary>statx(2): the current directory, flags, and the fields asked for.</summary>
    public const int AtFdCwd = -100, AtSymlinkNoFollow = 0x100, AtEmptyPath = 0x1000;
    public const uint StatxType = 0x1, StatxMode = 0x2, StatxUid = 0x8, StatxIno = 0x100;

    /// <summary>File type bits of <c>st_mode</c>.</summary>
    public const int SIfMt = 0xF000, SIfReg = 0x8000, SIfDir = 0x4000, SIfLnk = 0xA000;

    /// <summary>eventfd(2) and open(2) flags.</summary>
    public const int EfdNonBlock = 0x800, EfdCloexec = 0x80000, ONonBlock = 0x800, OCloexec = 0x80000;

    /// <summary>fcntl(2): set a pipe's capacity.</summary>
    public const int FSetPipeSize = 1031;

    /// <summary>splice(2) flags.</summary>
    public const uint SpliceMove = 1, SpliceNonBlock = 2;

    /// <summary>ioctl(2) on a socket: bytes not yet sent (<c>SIOCOUTQ</c>).</summary>
    public const nuint SiocOutQ = 0x5411;

    // ---- layouts ---------------------------------------------------------------------------------

    /// <summary><c>struct iovec</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    /// <summary><c>struct msghdr</c> (56 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public byte* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public byte* Control;
        public nuint ControlLength;
        public int Flags;
    }

    /// <summary><c>struct mmsghdr</c> (64 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MMsgHdr
    {
        public MsgHdr Header;
        public uint Length;
    }

    /// <summary><c>struct pollfd</c> (8 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    /// <summary>A <c>struct cmsghdr</c> carrying one u16 (UDP_SEGMENT), padded to CMSG_SPACE(2) = 24 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct SegmentCmsg
    {
        public nuint Length;
        public int Level;
        public int Type;
        public ushort Segment;
        private readonly ushort _pad1;
        private readonly uint _pad2;
    }

    /// <summary><c>struct rlimit</c> (16 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    /// <summary>
    /// <c>struct statx</c> (256 bytes, the same on every architecture): the fields read here at their
    /// offsets (mask 0, nlink 16, uid 20, gid 24, mode 28, ino 32, dev major/minor 136/140).
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    public struct Statx
    {
        [FieldOffset(0)] public uint Mask;
        [FieldOffset(16)] public uint Links;
        [FieldOffset(20)] public uint Uid;
        [FieldOffset(24)] public uint Gid;
        [FieldOffset(28)] public ushort Mode;
        [FieldOffset(32)] public ulong Inode;
        [FieldOffset(136)] public uint DeviceMajor;
        [FieldOffset(140)] public uint DeviceMinor;
    }

    /// <summary>Offsets of <see cref="MsgHdr"/>.</summary>
    public static class MsgHdrLayout { public const int Size = 56, Name = 0, NameLen = 8, Iov = 16, IovLen = 24, Control = 32, ControlLen = 40, Flags = 48; }

    /// <summary>Offsets of <c>struct cmsghdr</c>; its data starts at <see cref="Data"/>.</summary>
    public static class CmsgHdrLayout { public const int Size = 16, Len = 0, Level = 8, Type = 12, Data = 16; }

    /// <summary>Offsets of <see cref="PollFd"/>.</summary>
    public static class PollFdLayout { public const int Size = 8, Fd = 0, Events = 4, REvents = 6; }

    /// <summary>CMSG_SPACE(n): header plus data rounded up to 8 bytes.</summary>
    public static int CmsgSpace(int dataLength) => CmsgHdrLayout.Size + ((dataLength + 7) & ~7);

    // ---- calls -----------------------------------------------------------------------------------

    [LibraryImport(Lib, EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint RecvMsg(int fd, void* msg, int flags);

    [LibraryImport(Lib, EntryPoint = "sendmsg", SetLastError = true)]
    public static partial nint SendMsg(int fd, void* msg, int flags);

    [LibraryImport(Lib, EntryPoint = "recvmmsg", SetLastError = true)]
    public static partial int RecvMMsg(int fd, MMsgHdr* msgvec, uint vlen, int flags, void* timeout);

    [LibraryImport(Lib, EntryPoint = "sendmmsg", SetLastError = true)]
    public static partial int SendMMsg(int fd, MMsgHdr* msgvec, uint vlen, int flags);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint count, int timeoutMs);

    [LibraryImport(Lib, EntryPoint = "ppoll", SetLastError = true)]
    public static partial int PPoll(void* fds, nuint count, long* timespec, nint sigmask);

    [LibraryImport(Lib, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, byte* value, uint length);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, out int value);

    [LibraryImport(Lib, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport(Lib, EntryPoint = "splice", SetLastError = true)]
    public static partial nint Splice(int fdIn, nint offIn, int fdOut, nint offOut, nuint length, uint flags);

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    public static partial int Pipe2(int* fds, int flags);

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint count);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport(Lib, EntryPoint = "getppid")]
    public static partial int GetParentProcessId();

    [LibraryImport(Lib, EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUserId();

    [LibraryImport(Lib, EntryPoint = "getrlimit", SetLastError = true)]
    public static partial int GetRLimit(int resource, out RLimit limit);

    [LibraryImport(Lib, EntryPoint = "setrlimit", SetLastError = true)]
    public static partial int SetRLimit(int resource, in RLimit limit);

    [LibraryImport(Lib, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatX(int dirFd, string path, int flags, uint mask, out Statx result);
}
