using System.Net;
using PtHost.Transports.Asport;

namespace PtHost.Tests.Unit;

/// <summary>spec/asport.md §3: exact bytes of each command, and the reassembly rules.</summary>
public sealed class AsportWireTests
{
    [Fact]
    public void ClientHello_is_header_uuid_big_endian_token_mode_and_port_range()
    {
        var id = Guid.Parse("00112233-4455-6677-8899-aabbccddeeff");
        var token = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var buf = new byte[AsportWire.ClientHelloSize];
        Assert.Equal(55, AsportWire.WriteClientHello(buf, new ClientHello(id, token, ForwardMode.TcpUdpQuic, 0x1234, 0x5678)));
        Assert.Equal("0000" + "00112233445566778899AABBCCDDEEFF" + Convert.ToHexString(token) + "04" + "1234" + "5678", Convert.ToHexString(buf));
        Assert.True(AsportWire.TryReadClientHello(buf, out var back));
        Assert.Equal(id, back.User);
        Assert.Equal(token, back.Token);
        Assert.Equal(ForwardMode.TcpUdpQuic, back.Mode);
        Assert.Equal((0x1234, 0x5678), ((int)back.PortStart, (int)back.PortEnd));
    }

    [Theory]
    [InlineData(1, 0, 50, 5)]   // version 1
    [InlineData(0, 9, 50, 5)]   // unknown command
    [InlineData(0, 1, 50, 5)]   // not a ClientHello
    [InlineData(0, 0, 50, 9)]   // forward mode 9 (the seed defines 0..4)
    public void ClientHello_with_a_bad_version_command_or_mode_is_rejected(byte version, byte command, int modeAt, byte mode)
    {
        var buf = new byte[AsportWire.ClientHelloSize];
        AsportWire.WriteClientHello(buf, new ClientHello(Guid.NewGuid(), new byte[32], ForwardMode.Tcp, 1, 2));
        buf[0] = version;
        buf[1] = command;
        buf[modeAt] = mode;
        Assert.False(AsportWire.TryReadClientHello(buf, out _));
    }

    [Fact]
    public void ClientHello_of_the_wrong_length_or_with_start_above_end_is_rejected()
    {
        var buf = new byte[AsportWire.ClientHelloSize + 1];
        AsportWire.WriteClientHello(buf, new ClientHello(Guid.NewGuid(), new byte[32], ForwardMode.Tcp, 1, 2));
        Assert.False(AsportWire.TryReadClientHello(buf, out _));
        Assert.False(AsportWire.TryReadClientHello(buf.AsSpan(0, 54), out _));
        AsportWire.WriteClientHello(buf, new ClientHello(Guid.NewGuid(), new byte[32], ForwardMode.Tcp, 3, 2));
        Assert.False(AsportWire.TryReadClientHello(buf.AsSpan(0, 55), out _));
    }

    [Fact]
    public void ServerHello_carries_the_port_only_on_success()
    {
        var buf = new byte[5];
        Assert.Equal(5, AsportWire.WriteServerHello(buf, ServerHelloCode.Success, 0x2345));
        Assert.Equal("0001002345", Convert.ToHexString(buf));
        Assert.True(AsportWire.TryReadServerHello(buf, out var code, out var port));
        Assert.Equal((ServerHelloCode.Success, (ushort)0x2345), (code, port));
        Assert.Equal(3, AsportWire.WriteServerHello(buf, ServerHelloCode.PortDenied, 0));
        Assert.Equal("000103", Convert.ToHexString(buf.AsSpan(0, 3)));
        Assert.True(AsportWire.TryReadServerHello(buf.AsSpan(0, 3), out code, out _));
        Assert.Equal(ServerHelloCode.PortDenied, code);
        Assert.False(AsportWire.TryReadServerHello(buf.AsSpan(0, 4), out _, out _));
        Assert.False(AsportWire.TryReadServerHello([0, 1, 7], out _, out _));
    }

    [Fact]
    public void Addresses_are_atyp_1_ipv4_4_ipv6_and_0xff_none()
    {
        var buf = new byte[19];
        Assert.Equal(7, AsportWire.WriteAddress(buf, IPEndPoint.Parse("1.2.3.4:258")));
        Assert.Equal("0101020304" + "0102", Convert.ToHexString(buf.AsSpan(0, 7)));
        Assert.Equal(19, AsportWire.WriteAddress(buf, IPEndPoint.Parse("[::1]:80")));
        Assert.Equal("04" + "00000000000000000000000000000001" + "0050", Convert.ToHexString(buf));
        Assert.Equal(1, AsportWire.WriteAddress(buf, null));
        Assert.Equal(0xFF, buf[0]);
        Assert.False(AsportWire.TryReadAddress([3, 1, 2, 3, 4, 0, 1], out _, out _)); // ATYP 3 (domain) is not in ASPORT
        Assert.False(AsportWire.TryReadAddress([1, 1, 2, 3], out _, out _));           // short
    }

    [Fact]
    public void An_ipv4_mapped_ipv6_address_reads_back_as_ipv4()
    {
        var buf = new byte[19];
        AsportWire.WriteAddress(buf, new IPEndPoint(IPAddress.Parse("::ffff:10.0.0.1"), 9));
        Assert.True(AsportWire.TryReadAddress(buf, out var ep, out _));
        Assert.Equal(IPEndPoint.Parse("10.0.0.1:9"), ep);
    }

    [Fact]
    public void Packet_header_layout()
    {
        var buf = new byte[32];
        var n = AsportWire.WritePacketHeader(buf, new PacketHeader(0x0102, 0x0304, 3, 1, 0x0506, null));
        Assert.Equal("0003" + "0102" + "0304" + "03" + "01" + "0506" + "FF", Convert.ToHexString(buf.AsSpan(0, n)));
        Assert.True(AsportWire.TryReadPacketHeader(buf.AsSpan(2, n - 2), out var h, out var used));
        Assert.Equal(n - 2, used);
        Assert.Equal(new PacketHeader(0x0102, 0x0304, 3, 1, 0x0506, null), h);
    }

    [Theory]
    [InlineData(100, 1)]
    [InlineData(1190 - 17, 1)]       // exactly fills the first fragment
    [InlineData(1190 - 17 + 1, 2)]
    [InlineData(1190 - 17 + 1179, 2)] // exact multiple: no empty third fragment (unlike the reference)
    [InlineData(1190 - 17 + 1179 + 1, 3)]
    public void Fragment_count_uses_the_datagram_size_and_never_emits_an_empty_last_fragment(int payload, int expected)
    {
        Assert.Equal(expected, AsportWire.FragmentCount(payload, 1190, IPEndPoint.Parse("1.2.3.4:5")));
    }

    [Fact]
    public void Fragments_reassemble_in_any_order_and_only_the_first_carries_the_address()
    {
        var payload = Enumerable.Range(0, 5000).Select(i => (byte)i).ToArray();
        var address = IPEndPoint.Parse("10.1.2.3:4000");
        const int Max = 1200;
        var total = AsportWire.FragmentCount(payload.Length, Max, address);
        Assert.Equal(5, total);
        var frags = Enumerable.Range(0, total).Select(i =>
        {
            var b = new byte[Max];
            var n = AsportWire.WriteFragment(b, 7, 9, i, total, payload, Max, address);
            Assert.True(n <= Max);
            return b[..n];
        }).ToArray();
        var r = new AsportReassembly(TimeSpan.FromSeconds(15));
        AsportReassembly.Result last = default;
        byte[]? whole = null;
        int length = 0;
        IPEndPoint? got = null;
        foreach (var i in new[] { 3, 0, 4, 1, 2 })
        {
            Assert.True(AsportWire.TryReadHeader(frags[i], out var cmd) && cmd == AsportCommand.Packet);
            Assert.True(AsportWire.TryReadPacketHeader(frags[i].AsSpan(2), out var h, out var used));
            Assert.Equal(i == 0, h.Address is not null);
            last = r.Offer(h, frags[i].AsSpan(2 + used), 0, out whole, out length, out got);
        }
        Assert.Equal(AsportReassembly.Result.Complete, last);
        Assert.Equal(payload, whole.AsSpan(0, length).ToArray());
        Assert.Equal(address, got);
        Assert.Equal(0, r.PendingCount);
    }

    public static TheoryData<PacketHeader, int> BadFragments => new()
    {
        { new PacketHeader(1, 1, 2, 2, 4, null), 4 },                              // frag_id >= total
        { new PacketHeader(1, 1, 0, 0, 4, IPEndPoint.Parse("1.1.1.1:1")), 4 },     // total 0
        { new PacketHeader(1, 1, 2, 0, 4, null), 4 },                              // first without address
        { new PacketHeader(1, 1, 2, 1, 4, IPEndPoint.Parse("1.1.1.1:1")), 4 },     // later with address
        { new PacketHeader(1, 1, 1, 0, 5, IPEndPoint.Parse("1.1.1.1:1")), 4 },     // size disagrees with the data
    };

    [Theory]
    [MemberData(nameof(BadFragments))]
    public void Malformed_fragments_are_rejected(PacketHeader h, int dataLength)
    {
        var r = new AsportReassembly(TimeSpan.FromSeconds(15));
        Assert.Equal(AsportReassembly.Result.Rejected, r.Offer(h, new byte[dataLength], 0, out _, out _, out _));
        Assert.Equal(1, r.Rejected);
    }

    [Fact]
    public void A_duplicate_fragment_or_a_changed_total_is_rejected()
    {
        var r = new AsportReassembly(TimeSpan.FromSeconds(15));
        var first = new PacketHeader(1, 1, 3, 0, 2, IPEndPoint.Parse("1.1.1.1:1"));
        Assert.Equal(AsportReassembly.Result.Incomplete, r.Offer(first, new byte[2], 0, out _, out _, out _));
        Assert.Equal(AsportReassembly.Result.Rejected, r.Offer(first, new byte[2], 0, out _, out _, out _));
        Assert.Equal(AsportReassembly.Result.Rejected, r.Offer(new PacketHeader(1, 1, 4, 1, 2, null), new byte[2], 0, out _, out _, out _));
    }

    [Fact]
    public void An_incomplete_packet_is_dropped_after_the_timeout()
    {
        var r = new AsportReassembly(TimeSpan.FromSeconds(15));
        r.Offer(new PacketHeader(1, 1, 2, 0, 2, IPEndPoint.Parse("1.1.1.1:1")), new byte[2], 1_000, out _, out _, out _);
        r.Expire(15_000);
        Assert.Equal(1, r.PendingCount);
        r.Expire(16_001);
        Assert.Equal(0, r.PendingCount);
        Assert.Equal(1, r.Expired);
        // The late second half now starts a new packet that never completes.
        Assert.Equal(AsportReassembly.Result.Incomplete, r.Offer(new PacketHeader(1, 1, 2, 1, 2, null), new byte[2], 16_002, out _, out _, out _));
    }

    [Theory]
    [InlineData("8080", 8080, 8080)]
    [InlineData("20000-20100", 20000, 20100)]
    public void Port_ranges_parse(string text, int start, int end)
    {
        Assert.True(AsportRelayOptions.TryParseRange(text, out var r));
        Assert.Equal((start, end), ((int)r.Start, (int)r.End));
    }

    [Theory]
    [InlineData("0")]
    [InlineData("5-4")]
    [InlineData("70000")]
    [InlineData("a-b")]
    [InlineData("")]
    public void Bad_port_ranges_are_refused(string text) => Assert.False(AsportRelayOptions.TryParseRange(text, out _));
}

/// <summary>Random and mutated input never makes an ASPORT parser or the reassembly throw (spec/asport.md §4.2: malformed is dropped).</summary>
public sealed class AsportRandomInputTests
{
    [Fact]
    public void Random_and_mutated_commands_never_throw()
    {
        var rng = new Random(20261130);
        var r = new AsportReassembly(TimeSpan.FromSeconds(15), maxPending: 64);
        var valid = new byte[64];
        var n = AsportWire.WritePacketHeader(valid, new PacketHeader(1, 2, 3, 0, 4, System.Net.IPEndPoint.Parse("1.2.3.4:5")));
        for (int i = 0; i < 200_000; i++)
        {
            byte[] msg;
            if (i % 2 == 0)
            {
                msg = new byte[rng.Next(0, 80)];
                rng.NextBytes(msg);
                if (msg.Length > 1 && rng.Next(2) == 0) { msg[0] = 0; msg[1] = (byte)rng.Next(0, 7); }
            }
            else
            {
                msg = valid[..(n + 4)];
                msg[rng.Next(msg.Length)] = (byte)rng.Next(256);
            }
            AsportWire.TryReadClientHello(msg, out _);
            AsportWire.TryReadServerHello(msg, out _, out _);
            AsportWire.TryReadAddress(msg, out _, out _);
            if (AsportWire.TryReadHeader(msg, out var cmd) && cmd == AsportCommand.Packet &&
                AsportWire.TryReadPacketHeader(msg.AsSpan(2), out var h, out var used))
            {
                if (r.Offer(h, msg.AsSpan(2 + used), i, out var payload, out _, out _) == AsportReassembly.Result.Complete)
                    AsportReassembly.ReturnBuffer(payload!);
            }
        }
        Assert.True(r.PendingCount <= 64);
    }
}
