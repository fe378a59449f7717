using System.Buffers.Binary;
using System.Net;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Tests.Unit.Turn;

/// <summary>The STUN codec (RFC 5389), checked against RFC 5769's test vectors and malformed input.</summary>
public class StunTests
{
    /// <summary>RFC 5769 §2.1: sample request (short-term key "VOkJxbRl1RmTxUk/WvJxBt").</summary>
    internal static readonly byte[] Rfc5769Request = Convert.FromHexString(
        "000100582112a442b7e7a701bc34d686fa87dfae" +
        "802200105354554e20746573742063" + "6c69656e74" +
        "002400046e0001ff" +
        "80290008932ff9b151263b36" +
        "000600096576746a3a68367659202020" +
        "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2" +
        "80280004e57a3bcf");

    /// <summary>RFC 5769 §2.2: sample IPv4 response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.</summary>
    internal static readonly byte[] Rfc5769Response = Convert.FromHexString(
        "0101003c2112a442b7e7a701bc34d686fa87dfae" +
        "8022000b7465737420766563746f7220" +
        "002000080001a147e112a643" +
        "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7" +
        "80280004c07d4c96");

    private static readonly byte[] ShortTermKey = "VOkJxbRl1RmTxUk/WvJxBt"u8.ToArray();

    [Theory]
    [InlineData(StunMethod.Binding, StunClass.Request, 0x0001)]
    [InlineData(StunMethod.Binding, StunClass.Success, 0x0101)]
    [InlineData(StunMethod.Allocate, StunClass.Request, 0x0003)]
    [InlineData(StunMethod.Allocate, StunClass.Success, 0x0103)]
    [InlineData(StunMethod.Allocate, StunClass.Error, 0x0113)]
    [InlineData(StunMethod.Send, StunClass.Indication, 0x0016)]
    [InlineData(StunMethod.Data, StunClass.Indication, 0x0017)]
    [InlineData(StunMethod.CreatePermission, StunClass.Request, 0x0008)]
    [InlineData(StunMethod.ChannelBind, StunClass.Error, 0x0119)]
    public void Message_type_interleaves_method_and_class_bits(int method, StunClass @class, int type)
    {
        Assert.Equal(type, Stun.TypeOf(method, @class));
        Assert.Equal(method, Stun.MethodOf((ushort)type));
        Assert.Equal(@class, Stun.ClassOf((ushort)type));
    }

    [Fact]
    public void Rfc5769_request_parses_and_its_integrity_and_fingerprint_verify()
    {
        Assert.Equal(StunParseError.None, Stun.TryParse(Rfc5769Request, out var m));
        Assert.Equal(StunClass.Request, m.Class);
        Assert.Equal(StunMethod.Binding, m.Method);
        Assert.True(m.HasFingerprint);
        Assert.True(Stun.CheckIntegrity(m, ShortTermKey));
        Assert.False(Stun.CheckIntegrity(m, "wrong"u8));
        Assert.True(m.TryGet(StunAttribute.Username, out var user));
        Assert.Equal("evtj:h6vY", System.Text.Encoding.UTF8.GetString(user));
        Span<ushort> unknown = stackalloc ushort[4];
        int n = m.UnknownRequired(unknown);
        Assert.Equal([(ushort)0x0024], unknown[..n].ToArray()); // PRIORITY (ICE) is comprehension-required and not TURN's
    }

    [Fact]
    public void Rfc5769_response_gives_192_0_2_1_port_32853()
    {
        Assert.Equal(StunParseError.None, Stun.TryParse(Rfc5769Response, out var m));
        Assert.True(Stun.CheckIntegrity(m, ShortTermKey));
        Assert.True(m.TryGet(StunAttribute.XorMappedAddress, out var value));
        Assert.True(Stun.TryReadXorAddress(value, m.TransactionId, out var address));
        Assert.Equal(new IPEndPoint(IPAddress.Parse("192.0.2.1"), 32853), address.ToEndPoint());
    }

    [Fact]
    public void Writer_rebuilds_rfc5769_response_byte_for_byte()
    {
        Span<byte> buffer = stackalloc byte[256];
        var w = new StunWriter(buffer, StunMethod.Binding, StunClass.Success, Rfc5769Response.AsSpan(8, 12));
        w.Add(StunAttribute.Software, "test vector"u8);
        w.AddXorAddress(StunAttribute.XorMappedAddress, PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.1"), 32853)));
        w.AddIntegrity(ShortTermKey);
        w.AddFingerprint();
        var built = w.Written.ToArray();
        // RFC 5769 pads SOFTWARE with a space (0x20); padding content is not significant (RFC 5389 §15), ours is zero.
        built[20 + 4 + 11] = 0x20;
        // Header, SOFTWARE and XOR-MAPPED-ADDRESS match; MESSAGE-INTEGRITY and FINGERPRINT cover the padding, so they differ.
        Assert.Equal(Rfc5769Response.AsSpan(0, 48).ToArray(), built.AsSpan(0, 48).ToArray());
        Assert.Equal(StunParseError.None, Stun.TryParse(w.Written, out var ours));
        Assert.True(Stun.CheckIntegrity(ours, ShortTermKey));
    }

    [Fact]
    public void Xor_address_round_trips_for_ipv6_using_the_transaction_id()
    {
        byte[] tid = Convert.FromHexString("b7e7a701bc34d686fa87dfae");
        var peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse("2001:db8:1234:5678:11:2233:4455:6677"), 32853));
        Span<byte> value = stackalloc byte[20];
        Assert.Equal(20, Stun.WriteXorAddress(value, peer, tid));
        // RFC 5769 §2.3: the IPv6 vector's xor'd value.
        Assert.Equal(Convert.FromHexString("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"), value.ToArray());
        Assert.True(Stun.TryReadXorAddress(value, tid, out var back));
        Assert.Equal(peer, back);
    }

    [Theory]
    [InlineData("0002a147e112a6")]           // IPv4 value too short
    [InlineData("0003a147e112a643")]         // family 3
    [InlineData("0001a147e112a64300000000")] // IPv4 with 4 bytes too many
    public void Xor_address_rejects_bad_lengths_and_families(string hex) =>
        Assert.False(Stun.TryReadXorAddress(Convert.FromHexString(hex), new byte[12], out _));

    [Fact]
    public void Too_short_is_refused() =>
        Assert.Equal(StunParseError.TooShort, Stun.TryParse(Rfc5769Request.AsSpan(0, 19), out _));

    [Fact]
    public void Top_bits_set_is_not_stun()
    {
        byte[] m = (byte[])Rfc5769Response.Clone();
        m[0] |= 0x40;
        Assert.Equal(StunParseError.NotStun, Stun.TryParse(m, out _));
    }

    [Fact]
    public void Bad_magic_cookie_is_refused()
    {
        byte[] m = (byte[])Rfc5769Response.Clone();
        m[7] ^= 1;
        Assert.Equal(StunParseError.BadCookie, Stun.TryParse(m, out _));
    }

    [Theory]
    [InlineData(0x3d)] // not a multiple of 4
    [InlineData(0x40)] // longer than the datagram
    [InlineData(0x38)] // shorter than the datagram
    public void Length_that_does_not_match_is_refused(int length)
    {
        byte[] m = (byte[])Rfc5769Response.Clone();
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(2), (ushort)length);
        Assert.Equal(StunParseError.BadLength, Stun.TryParse(m, out _));
    }

    [Fact]
    public void Attribute_value_that_overruns_the_message_is_refused()
    {
        // Header length 8: one attribute claiming 12 bytes of value.
        byte[] m = [.. Header(0x0001, 8), 0x80, 0x22, 0x00, 0x0c, 1, 2, 3, 4];
        Assert.Equal(StunParseError.AttributeOverrun, Stun.TryParse(m, out _));
    }

    [Fact]
    public void Attribute_without_its_padding_is_refused()
    {
        // A 5-byte value needs 3 bytes of padding; the message stops after 4+5+0 ... so length 12 covers 4+5+3 only if present.
        byte[] ok = [.. Header(0x0001, 12), 0x80, 0x22, 0x00, 0x05, (byte)'a', (byte)'b', (byte)'c', (byte)'d', (byte)'e', 0, 0, 0];
        Assert.Equal(StunParseError.None, Stun.TryParse(ok, out var m));
        Assert.True(m.TryGet(StunAttribute.Software, out var v));
        Assert.Equal("abcde"u8.ToArray(), v.ToArray());
        byte[] unpadded = [.. Header(0x0001, 12), 0x80, 0x22, 0x00, 0x09, 1, 2, 3, 4, 5, 6, 7, 8];
        Assert.Equal(StunParseError.AttributeOverrun, Stun.TryParse(unpadded, out _));
    }

    [Fact]
    public void Attribute_header_cut_short_is_refused()
    {
        // Length 4 = exactly one attribute header with value length 0 → fine; length 4 with value 1 → overrun.
        byte[] fine = [.. Header(0x0001, 4), 0x80, 0x22, 0x00, 0x00];
        Assert.Equal(StunParseError.None, Stun.TryParse(fine, out _));
        byte[] cut = [.. Header(0x0001, 4), 0x80, 0x22, 0x00, 0x01];
        Assert.Equal(StunParseError.AttributeOverrun, Stun.TryParse(cut, out _));
    }

    [Fact]
    public void Wrong_fingerprint_is_refused()
    {
        byte[] m = (byte[])Rfc5769Response.Clone();
        m[^1] ^= 1;
        Assert.Equal(StunParseError.BadFingerprint, Stun.TryParse(m, out _));
    }

    [Fact]
    public void Fingerprint_must_be_last()
    {
        Span<byte> buffer = stackalloc byte[128];
        var w = new StunWriter(buffer, StunMethod.Binding, StunClass.Request, new byte[12]);
        w.AddFingerprint();
        w.Add(StunAttribute.Software, "x"u8);
        Assert.Equal(StunParseError.BadAttribute, Stun.TryParse(w.Written, out _));
    }

    [Fact]
    public void Attributes_after_message_integrity_are_ignored()
    {
        Span<byte> buffer = stackalloc byte[128];
        var w = new StunWriter(buffer, StunMethod.Binding, StunClass.Request, new byte[12]);
        w.AddIntegrity("k"u8);
        w.Add(StunAttribute.Username, "late"u8);
        w.Add(0x0030, "unknown"u8);
        Assert.Equal(StunParseError.None, Stun.TryParse(w.Written, out var m));
        Assert.False(m.Has(StunAttribute.Username));
        Span<ushort> unknown = stackalloc ushort[4];
        Assert.Equal(0, m.UnknownRequired(unknown));
    }

    [Fact]
    public void Error_code_and_unknown_attributes_are_encoded_as_rfc_5389_says()
    {
        Span<byte> buffer = stackalloc byte[128];
        var w = new StunWriter(buffer, StunMethod.Allocate, StunClass.Error, new byte[12]);
        w.AddErrorCode(420);
        w.AddUnknownAttributes([0x0030, 0x0031, 0x0032]);
        Assert.Equal(StunParseError.None, Stun.TryParse(w.Written, out var m));
        Assert.True(m.TryGet(StunAttribute.ErrorCode, out var e));
        Assert.Equal([0, 0, 4, 20, .. "Unknown Attribute"u8], e.ToArray());
        Assert.True(m.TryGet(StunAttribute.UnknownAttributes, out var u));
        Assert.Equal(new byte[] { 0, 0x30, 0, 0x31, 0, 0x32 }, u.ToArray());
        Assert.Equal(0, m.Bytes.Length % 4);
    }

    [Fact]
    public void Long_term_key_is_md5_of_user_realm_password()
    {
        // MD5("user:realm:pass")
        Assert.Equal(System.Security.Cryptography.MD5.HashData("user:realm:pass"u8), Stun.LongTermKey("user", "realm", "pass"));
    }

    [Fact]
    public void Random_input_never_throws()
    {
        var random = new Random(5389);
        byte[] data = new byte[200];
        Span<ushort> unknown = stackalloc ushort[16];
        for (int i = 0; i < 20000; i++)
        {
            int n = random.Next(data.Length);
            random.NextBytes(data.AsSpan(0, n));
            if (i % 2 == 0 && n >= 20)
            {
                data[0] &= 0x3f;
                BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4), Stun.MagicCookie);
                BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(2), (ushort)((n - 20) & ~3));
                n = 20 + ((n - 20) & ~3);
            }
            if (Stun.TryParse(data.AsSpan(0, n), out var m) != StunParseError.None) continue;
            foreach (var a in m.Attributes) _ = a.Value.Length;
            m.UnknownRequired(unknown);
        }
    }

    private static byte[] Header(ushort type, int length)
    {
        byte[] h = new byte[20];
        BinaryPrimitives.WriteUInt16BigEndian(h, type);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(2), (ushort)length);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(4), Stun.MagicCookie);
        return h;
    }
}
