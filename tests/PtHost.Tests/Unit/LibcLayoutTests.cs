using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PtHost.Net.Native;

namespace PtHost.Tests.Unit;

/// <summary>Native/Libc.cs describes each Linux LP64 layout twice (structs for typed callers, offsets for raw buffers): both must agree.</summary>
public class LibcLayoutTests
{
    [Fact]
    public void Msghdr_offsets_are_the_structs()
    {
        Assert.Equal(Libc.MsgHdrLayout.Size, Unsafe.SizeOf<Libc.MsgHdr>());
        Assert.Equal(Libc.MsgHdrLayout.Name, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.Name)));
        Assert.Equal(Libc.MsgHdrLayout.NameLen, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.NameLength)));
        Assert.Equal(Libc.MsgHdrLayout.Iov, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.Iov)));
        Assert.Equal(Libc.MsgHdrLayout.IovLen, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.IovLength)));
        Assert.Equal(Libc.MsgHdrLayout.Control, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.Control)));
        Assert.Equal(Libc.MsgHdrLayout.ControlLen, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.ControlLength)));
        Assert.Equal(Libc.MsgHdrLayout.Flags, Offset<Libc.MsgHdr>(nameof(Libc.MsgHdr.Flags)));
        Assert.Equal(64, Unsafe.SizeOf<Libc.MMsgHdr>());
        Assert.Equal(16, Unsafe.SizeOf<Libc.IoVec>());
    }

    [Fact]
    public void Pollfd_and_cmsghdr_offsets_are_the_structs()
    {
        Assert.Equal(Libc.PollFdLayout.Size, Unsafe.SizeOf<Libc.PollFd>());
        Assert.Equal(Libc.PollFdLayout.Fd, Offset<Libc.PollFd>(nameof(Libc.PollFd.Fd)));
        Assert.Equal(Libc.PollFdLayout.Events, Offset<Libc.PollFd>(nameof(Libc.PollFd.Events)));
        Assert.Equal(Libc.PollFdLayout.REvents, Offset<Libc.PollFd>(nameof(Libc.PollFd.Revents)));
        Assert.Equal(Libc.CmsgSpace(sizeof(ushort)), Unsafe.SizeOf<Libc.SegmentCmsg>());
        Assert.Equal(Libc.CmsgHdrLayout.Level, Offset<Libc.SegmentCmsg>(nameof(Libc.SegmentCmsg.Level)));
        Assert.Equal(Libc.CmsgHdrLayout.Type, Offset<Libc.SegmentCmsg>(nameof(Libc.SegmentCmsg.Type)));
        Assert.Equal(Libc.CmsgHdrLayout.Data, Offset<Libc.SegmentCmsg>(nameof(Libc.SegmentCmsg.Segment)));
    }

    private static int Offset<T>(string field) => (int)Marshal.OffsetOf<T>(field);
}
