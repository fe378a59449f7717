using System.Net;
using System.Net.Sockets;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>The wire codec and primitives (spec/rud.md §2–§6), one test per rule.</summary>
public class RudWireTests
{
    [Theory]
    [InlineData("c2197c5eff14e88c", 151288809941952652UL)]
    [InlineData("9d7f3e7d", 494878333UL)]
    [InlineData("7bbd", 15293UL)]
    [InlineData("25", 37UL)]
    [InlineData("4025", 37UL)]
    public void Varints_decode_as_in_RFC_9000_section_16_including_longer_than_needed_forms(string hex, ulong value)
    {
        var bytes = Convert.FromHexString(hex);
        int pos = 0;
        Assert.True(RudWire.TryReadVarint(bytes, ref pos, out ulong v));
        Assert.Equal(value, v);
        Assert.Equal(bytes.Length, pos);
    }

    [Theory]
    [InlineData(0UL, 1)]
    [InlineData(63UL, 1)]
    [InlineData(64UL, 2)]
    [InlineData(16383UL, 2)]
    [InlineData(16384UL, 4)]
    [InlineData((1UL << 30) - 1, 4)]
    [InlineData(1UL << 30, 8)]
    [InlineData((1UL << 62) - 1, 8)]
    public void Varints_are_written_in_the_shortest_form_and_read_back(ulong value, int length)
    {
        var b = new byte[8];
        Assert.Equal(length, RudWire.WriteVarint(b, value));
        int pos = 0;
        Assert.True(RudWire.TryReadVarint(b.AsSpan(0, length), ref pos, out ulong v));
        Assert.Equal(value, v);
    }

    [Fact]
    public void A_truncated_varint_is_malformed()
    {
        int pos = 0;
        Assert.False(RudWire.TryReadVarint(Convert.FromHexString("c2197c"), ref pos, out _));
    }

    [Fact]
    public void X25519_matches_the_RFC_7748_section_6_1_vectors()
    {
        var alice = Convert.FromHexString("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        var bob = Convert.FromHexString("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        var alicePub = new byte[32];
        var bobPub = new byte[32];
        X25519.PublicKey(alice, alicePub);
        X25519.PublicKey(bob, bobPub);
        Assert.Equal("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a", Convert.ToHexStringLower(alicePub));
        Assert.Equal("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f", Convert.ToHexStringLower(bobPub));
        var k1 = new byte[32];
        var k2 = new byte[32];
        Assert.True(X25519.Agree(alice, bobPub, k1));
        Assert.True(X25519.Agree(bob, alicePub, k2));
        Assert.Equal("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742", Convert.ToHexStringLower(k1));
        Assert.Equal(k1, k2);
    }

    [Fact]
    public void A_low_order_peer_key_giving_an_all_zero_secret_is_rejected()
    {
        var shared = new byte[32];
        Assert.False(X25519.Agree(X25519.GeneratePrivateKey(), new byte[32], shared));
        var one = new byte[32];
        one[0] = 1;
        Assert.False(X25519.Agree(X25519.GeneratePrivateKey(), one, shared));
    }

    [Fact]
    public void A_token_is_valid_within_its_lifetime_expired_after_it_and_invalid_for_another_initiator()
    {
        var issuer = new TokenIssuer(TimeSpan.FromSeconds(10));
        var who = new IPEndPoint(IPAddress.Parse("192.0.2.7"), 4444);
        var token = new byte[TokenIssuer.TokenSize];
        issuer.Issue(who, 99, 1_000_000, token);
        Assert.Equal(TokenCheck.Valid, issuer.Check(token, who, 99, 1_000_000));
        Assert.Equal(TokenCheck.Valid, issuer.Check(token, who, 99, 1_009_999));
        Assert.Equal(TokenCheck.Expired, issuer.Check(token, who, 99, 1_010_000));
        Assert.Equal(TokenCheck.Expired, issuer.Check(token, who, 99, 999_999)); // issued in the future
        Assert.Equal(TokenCheck.Invalid, issuer.Check(token, new IPEndPoint(who.Address, 4445), 99, 1_000_000));
        Assert.Equal(TokenCheck.Invalid, issuer.Check(token, new IPEndPoint(IPAddress.Parse("192.0.2.8"), 4444), 99, 1_000_000));
        Assert.Equal(TokenCheck.Invalid, issuer.Check(token, who, 98, 1_000_000));
        token[^1] ^= 1;
        Assert.Equal(TokenCheck.Invalid, issuer.Check(token, who, 99, 1_000_000));
        Assert.Equal(TokenCheck.Invalid, new TokenIssuer(TimeSpan.FromSeconds(10)).Check(token, who, 99, 1_000_000));
    }

    [Fact]
    public void An_IPv4_mapped_address_gets_the_same_token_as_the_IPv4_address()
    {
        var issuer = new TokenIssuer(TimeSpan.FromSeconds(10));
        var token = new byte[TokenIssuer.TokenSize];
        issuer.Issue(new IPEndPoint(IPAddress.Parse("192.0.2.7"), 1), 5, 0, token);
        Assert.Equal(TokenCheck.Valid, issuer.Check(token, new IPEndPoint(IPAddress.Parse("::ffff:192.0.2.7"), 1), 5, 1));
    }

    [Fact]
    public void The_spec_example_STREAM_frame_parses()
    {
        // §13: header block flags 0, then STREAM stream 0 offset 0 length 2 "hi".
        var payload = Convert.FromHexString("00080000026869");
        Assert.True(RudWire.TryParseHeaderBlock(payload, out var header, out int hb));
        Assert.False(header.HasAck);
        Assert.Equal(1, hb);
        int pos = hb;
        Assert.True(RudWire.TryReadFrame(payload, ref pos, out var f));
        Assert.Equal(FrameType.Stream, f.Type);
        Assert.Equal(0UL, f.StreamId);
        Assert.Equal("hi", System.Text.Encoding.ASCII.GetString(payload, f.DataOffset, f.DataLength));
        Assert.Equal(payload.Length, pos);
    }

    [Fact]
    public void A_header_block_with_an_acknowledgement_and_a_retransmit_index_parses()
    {
        var b = new byte[64];
        int n = 0;
        b[n++] = RudWire.FlagAck | RudWire.FlagRetransmit;
        n += RudWire.WriteVarint(b.AsSpan(n), 1000);
        n += RudWire.WriteVarint(b.AsSpan(n), 250);
        b[n++] = 2;
        b[n++] = 0x80;
        b[n++] = 0x01;
        n += RudWire.WriteVarint(b.AsSpan(n), 77);
        Assert.True(RudWire.TryParseHeaderBlock(b.AsSpan(0, n), out var h, out int length));
        Assert.Equal(n, length);
        Assert.Equal(1000UL, h.AckIndex);
        Assert.Equal(250UL, h.AckDelayMicroseconds);
        Assert.Equal(2, h.BitfieldLength);
        Assert.Equal(77UL, h.RetransmitIndex);
    }

    [Theory]
    [InlineData("04")]               // unknown flag bit
    [InlineData("01")]               // ACK flag without the fields
    [InlineData("01050021")]         // bitfield length 33
    [InlineData("0105000300")]       // bitfield runs past the payload
    [InlineData("02")]               // RETRANSMIT without its index
    [InlineData("")]
    public void Malformed_header_blocks_are_refused(string hex)
    {
        Assert.False(RudWire.TryParseHeaderBlock(Convert.FromHexString(hex), out _, out _));
    }

    [Theory]
    [InlineData("ff")]               // unknown frame type
    [InlineData("08000005686869")]   // STREAM length past the end
    [InlineData("0806000161")]       // STREAM on a reserved kind (id 6: kind 3)
    [InlineData("080400016100")]     // STREAM on a datagram stream (id 4: kind 2)
    [InlineData("06040002016100")]   // DATAGRAM with packet count 2
    [InlineData("0600000101")]       // DATAGRAM on an asynchronous stream
    [InlineData("0700")]             // CLOSE without a reason length
    [InlineData("0400")]             // RESET_STREAM cut short
    public void Malformed_frames_are_refused(string hex)
    {
        var payload = Convert.FromHexString(hex);
        int pos = 0;
        Assert.False(RudWire.TryReadFrame(payload, ref pos, out _));
    }

    [Fact]
    public void Stream_ids_carry_the_sequence_kind_and_side()
    {
        ulong id = RudWire.MakeStreamId(5, StreamKind.Transactional, 1);
        Assert.Equal(5UL * 8 + 2 + 1, id);
        Assert.Equal(StreamKind.Transactional, RudWire.StreamKindOf(id));
        Assert.Equal(1, RudWire.StreamSide(id));
        Assert.Equal(5UL, RudWire.StreamSequence(id));
    }

    [Fact]
    public void The_receive_window_detects_replays_and_never_acknowledges_the_packet_256_below()
    {
        var w = new ReceivedWindow();
        for (ulong n = 0; n <= 300; n++) w.Mark(n);
        Assert.True(w.IsReplay(300));
        Assert.True(w.IsReplay(45));   // 255 below: in the window, seen
        Assert.True(w.IsReplay(44));   // 256 below: too old
        Assert.False(w.IsReplay(301));
        var bits = new byte[32];
        Assert.Equal(32, w.WriteBitfield(bits));
        Assert.Equal(0xFE, bits[31]);  // bit 255 (packet 44) is never claimed
        var gap = new ReceivedWindow();
        gap.Mark(10);
        gap.Mark(12);
        Assert.False(gap.IsReplay(11));
        Assert.Equal(1, gap.WriteBitfield(bits));
        Assert.Equal(0x40, bits[0]);   // 12 is the largest; 11 missing, 10 received
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void The_receive_window_agrees_with_a_set_of_received_indexes(int seed)
    {
        // The shift-register window against the obvious model: after each of 20,000 marks (in
        // order, reordered, duplicated, with jumps beyond the window) the replay answers and the
        // bitfield bytes must match what a set of received indexes says.
        var random = new Random(seed);
        var w = new ReceivedWindow();
        var seen = new HashSet<ulong>();
        ulong largest = 0;
        ulong next = (ulong)random.Next(0, 5);
        var bits = new byte[32];
        var expected = new byte[32];
        for (int step = 0; step < 20_000; step++)
        {
            ulong n = random.Next(10) switch
            {
                0 when largest > 300 => largest - (ulong)random.Next(0, 300), // old or duplicate
                1 => next + (ulong)random.Next(0, 40),                        // a gap
                2 => next + (ulong)random.Next(250, 600),                     // beyond the window
                _ => next,
            };
            bool replay = seen.Count > 0 && n <= largest && (largest - n >= ReceivedWindow.Size || seen.Contains(n));
            Assert.Equal(replay, w.IsReplay(n));
            if (seen.Count > 0 && n <= largest && largest - n >= ReceivedWindow.Size) continue; // too old: not marked
            w.Mark(n);
            seen.Add(n);
            if (n >= largest) { largest = n; next = n + 1; }
            Assert.Equal(largest, w.Largest);
            Array.Clear(expected);
            int length = 0;
            for (int i = 0; i < ReceivedWindow.Size - 1 && (ulong)i < largest; i++)
            {
                if (!seen.Contains(largest - 1 - (ulong)i)) continue;
                expected[i >> 3] |= (byte)(0x80 >> (i & 7));
                length = (i >> 3) + 1;
            }
            Assert.Equal(length, w.WriteBitfield(bits));
            Assert.Equal(expected.AsSpan(0, length).ToArray(), bits.AsSpan(0, length).ToArray());
        }
    }

    [Fact]
    public void A_packet_sealed_with_a_sent_index_opens_only_with_the_same_index_and_header()
    {
        var secret = System.Security.Cryptography.RandomNumberGenerator.GetBytes(64);
        using var a = new PacketProtection(secret, 0);
        using var b = new PacketProtection(secret, 0);
        var header = new byte[RudWire.DataHeaderSize];
        int h = RudWire.WriteDataHeader(header, 42, 0, 7);
        var plain = "hello"u8.ToArray();
        var sealedData = new byte[plain.Length + 16];
        a.Seal(7, header.AsSpan(0, h), plain, sealedData);
        var back = new byte[plain.Length];
        Assert.True(b.Open(7, header.AsSpan(0, h), sealedData, back));
        Assert.Equal(plain, back);
        Assert.False(b.Open(8, header.AsSpan(0, h), sealedData, back));
        header[0] ^= 1;
        Assert.False(b.Open(7, header.AsSpan(0, h), sealedData, back));
        using var next = a.Next();
        Assert.Equal(1, next.Phase);
        Assert.NotEqual(secret, next.Secret);
    }
}
