using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using FsCheck;
using FsCheck.Fluent;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Socks;
using PtHost.Transports.Asport;
using PtHost.Transports.Jet;
using PtHost.Transports.Rud;
using PtHost.Turn;

namespace PtHost.Reliability;

/// <summary>FsCheck properties: encode/decode round trips of the SOCKS5 and PT 1.0 formats and of destinations.</summary>
public class RoundTripProperties
{
    private static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(1000);

    private static Gen<string> AnyText =>
        Gen.Frequency(
            (3, ArbMap.Default.GeneratorFor<string>().Select(s => s ?? "")),
            (2, Gen.Elements("\\", "=", ";", "\\\\", "\\=", "\\;", "a", "é", "😀", " ", "\0").ListOf().Select(l => string.Concat(l))));

    [Fact]
    public void PtArgs_Format_then_Parse_gives_back_the_arguments()
    {
        var pairs = Gen.Zip(AnyText.Where(k => k.Length > 0), AnyText).ListOf()
            .Select(l => l.GroupBy(p => p.Item1).Select(g => new KeyValuePair<string, string>(g.Key, g.First().Item2)).ToList());
        Check.One(Quick, Prop.ForAll(pairs.ToArbitrary(), args =>
        {
            var parsed = PtArgs.Parse(PtArgs.Format(args));
            return parsed.Count == args.Count && args.All(kv => (string?)parsed[kv.Key] == kv.Value);
        }));
    }

    private static Gen<string> Octet => Gen.Choose(0, 255).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture));

    private static Gen<string> IPv4 => Gen.Four(Octet).Select(t => $"{t.Item1}.{t.Item2}.{t.Item3}.{t.Item4}");

    private static Gen<string> IPv6 => Gen.ArrayOf(Gen.Choose(0, 255).Select(i => (byte)i), 16).Select(b => new IPAddress(b).ToString());

    private static Gen<string> HostName =>
        Gen.Elements("abcdefghijklmnopqrstuvwxyz0123456789-_.~!$%&'()*+,;=".ToCharArray()).NonEmptyListOf()
            .Select(l => new string([.. l.Take(255)]))
            .Where(Destination.IsValidHostName);

    private static Gen<Destination> Destinations =>
        Gen.Zip(Gen.OneOf(IPv4, IPv6, HostName), Gen.Choose(0, 65535)).Select(t => new Destination(t.Item1, t.Item2));

    [Fact]
    public void Destination_ToString_then_TryParse_gives_back_the_destination()
    {
        Check.One(Quick, Prop.ForAll(Destinations.ToArbitrary(), d =>
            Destination.TryParse(d.ToString(), out var back) && back == d && back.ToString() == d.ToString()));
    }

    [Fact]
    public void Destination_TryParse_is_idempotent_on_any_text()
    {
        var texts = Gen.OneOf(
            ArbMap.Default.GeneratorFor<string>().Select(s => s ?? ""),
            Destinations.Select(d => d.ToString()),
            Gen.Zip(Destinations.Select(d => d.ToString()), Gen.Zip(Gen.Choose(0, 30), Gen.Elements("[", "]", ":", ".", "0", "x", "%", " ")))
                .Select(t => t.Item1.Insert(Math.Min(t.Item2.Item1, t.Item1.Length), t.Item2.Item2)));
        Check.One(Quick, Prop.ForAll(texts.ToArbitrary(), s =>
            !Destination.TryParse(s, out var d) || (Destination.TryParse(d.ToString(), out var again) && again == d)));
    }

    /// <summary>A request built from a destination parses back to it (IPv4, IPv6, domain).</summary>
    [Fact]
    public void Socks5_request_encoding_then_TryParseRequest_gives_back_the_destination()
    {
        Check.One(Quick, Prop.ForAll(Destinations.ToArbitrary(), d =>
        {
            byte[] wire = d.Address is { } a
                ? a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? SocksClient.ConnectIPv4(a, d.Port) : SocksClient.ConnectIPv6(a, d.Port)
                : SocksClient.ConnectDomain(d.Host, d.Port);
            var seq = new ReadOnlySequence<byte>(wire);
            var status = Socks5Parser.TryParseRequest(ref seq, out var back, out _);
            var expected = d.Address is { IsIPv4MappedToIPv6: true } m ? new Destination(m.MapToIPv4().ToString(), d.Port) : d;
            return status == ParseStatus.Done && seq.Length == 0 && back!.Port == expected.Port
                && (expected.Address is null ? back.Host == expected.Host : expected.Address.Equals(back.Address));
        }));
    }

    /// <summary>Socks5.WriteReply, read back as a SOCKS client reads a reply: the code, address family, address and port survive.</summary>
    [Fact]
    public void Socks5_WriteReply_then_parse_gives_back_code_and_bound_address()
    {
        var endpoints = Gen.OneOf(
            Gen.Constant<IPEndPoint?>(null),
            Gen.Zip(IPv4, Gen.Choose(0, 65535)).Select(t => (IPEndPoint?)new IPEndPoint(IPAddress.Parse(t.Item1), t.Item2)),
            Gen.Zip(IPv6, Gen.Choose(0, 65535)).Select(t => (IPEndPoint?)new IPEndPoint(IPAddress.Parse(t.Item1), t.Item2)));
        var cases = Gen.Zip(Gen.Choose(0, 255).Select(i => (byte)i), endpoints);
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var (code, bound) = c;
            var buf = new byte[32];
            int n = Socks5.WriteReply(buf, code, bound);
            if (buf[0] != 5 || buf[1] != code || buf[2] != 0) return false;
            int expectedLength = buf[3] switch { 1 => 10, 4 => 22, _ => -1 };
            if (n != expectedLength) return false;
            var addr = new IPAddress(buf.AsSpan(4, n - 6));
            int port = BinaryPrimitives.ReadUInt16BigEndian(buf.AsSpan(n - 2));
            if (bound is null) return addr.Equals(IPAddress.Any) && port == 0;
            var want = bound.Address.IsIPv4MappedToIPv6 ? bound.Address.MapToIPv4() : bound.Address;
            return addr.Equals(want) && port == bound.Port;
        }));
    }

    /// <summary>A greeting with any 1–255 methods is consumed exactly and picks the preferred method offered.</summary>
    [Fact]
    public void Socks5_greeting_with_any_methods_picks_the_preferred_one()
    {
        var methods = Gen.Choose(0, 255).Select(i => (byte)i).NonEmptyListOf().Select(l => l.Take(255).ToArray());
        Check.One(Quick, Prop.ForAll(methods.ToArbitrary(), m =>
        {
            var seq = new ReadOnlySequence<byte>(SocksClient.Greeting(m));
            var status = Socks5Parser.TryParseGreeting(ref seq, out byte chosen, out _);
            byte expected = m.Contains((byte)9) ? (byte)9 : m.Contains((byte)0x80) ? (byte)0x80 : m.Contains((byte)2) ? (byte)2 : m.Contains((byte)0) ? (byte)0 : (byte)0xFF;
            return status == ParseStatus.Done && seq.Length == 0 && chosen == expected;
        }));
    }

    /// <summary>A settings block built from any JSON object of strings parses back to the same object.</summary>
    [Fact]
    public void Settings_block_round_trips_any_object_of_strings()
    {
        var objects = Gen.Zip(AnyText.Where(k => k.Length > 0 && !k.Any(char.IsSurrogate)), AnyText.Where(v => !v.Any(char.IsSurrogate))).ListOf()
            .Select(l => new JObject(l.GroupBy(p => p.Item1).Select(g => new JProperty(g.Key, g.First().Item2))));
        Check.One(Quick, Prop.ForAll(objects.ToArbitrary(), o =>
        {
            var seq = new ReadOnlySequence<byte>(SocksClient.SettingsBlock(o.ToString(Newtonsoft.Json.Formatting.None)));
            var status = Socks5Parser.TryParseSettings(ref seq, out var back, out _);
            return status == ParseStatus.Done && seq.Length == 0 && JToken.DeepEquals(o, back);
        }));
    }
}

/// <summary>FsCheck properties of the relay transports' codecs: whatever is encoded decodes to the same values (issue 7).</summary>
public class TransportRoundTripProperties
{
    private static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(1000);

    private static Gen<byte[]> Bytes(int min, int max) => Gen.Choose(min, max).SelectMany(n => Gen.ArrayOf(Gen.Choose(0, 255).Select(i => (byte)i), n));

    private static Gen<PeerAddress> Peers =>
        Gen.Zip(Gen.OneOf(Bytes(4, 4), Bytes(16, 16)), Gen.Choose(0, 65535)).Select(t => PeerAddress.FromBytes(t.Item1, t.Item2));

    private static Gen<Guid> Guids => Bytes(16, 16).Select(b => new Guid(b));

    /// <summary>STUN: any attributes written with StunWriter (and MESSAGE-INTEGRITY, FINGERPRINT) parse back in order, the integrity verifies.</summary>
    [Fact]
    public void Stun_writer_then_TryParse_gives_back_every_attribute()
    {
        var attribute = Gen.Zip(Gen.Choose(0, 0xffff).Select(t => (ushort)t).Where(t => t is not (StunAttribute.MessageIntegrity or StunAttribute.Fingerprint)), Bytes(0, 64));
        var cases = Gen.Zip(Gen.Zip(Gen.Choose(0, 0xfff), Gen.Elements(StunClass.Request, StunClass.Indication, StunClass.Success, StunClass.Error)),
            Gen.Zip(attribute.ListOf().Select(l => l.Take(12).ToList()), Gen.Zip(Bytes(12, 12), Gen.Zip(Gen.Elements(true, false), Gen.Elements(true, false)))));
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var ((method, cls), (attributes, (tid, (integrity, fingerprint)))) = c;
            byte[] key = [1, 2, 3];
            var wire = TransportParserFuzzTests.BuildStun(method, cls, tid, attributes.Select(a => (a.Item1, a.Item2)), integrity ? key : null, fingerprint);
            if (Stun.TryParse(wire, out var m) != StunParseError.None) return false;
            var back = new List<(ushort, byte[])>();
            foreach (var a in m.Attributes) back.Add((a.Type, a.Value.ToArray()));
            return m.Method == method && m.Class == cls && m.TransactionId.SequenceEqual(tid) && m.HasIntegrity == integrity
                && m.HasFingerprint == fingerprint && (!integrity || Stun.CheckIntegrity(m, key))
                && back.Count == attributes.Count && back.Zip(attributes).All(p => p.First.Item1 == p.Second.Item1 && p.First.Item2.SequenceEqual(p.Second.Item2));
        }));
    }

    /// <summary>STUN XOR addresses (RFC 5389 §15.2): write then read gives the address and port, for any transaction id.</summary>
    [Fact]
    public void Stun_xor_address_round_trips()
    {
        Check.One(Quick, Prop.ForAll(Gen.Zip(Peers, Bytes(12, 12)).ToArbitrary(), c =>
            Stun.TryReadXorAddress(TransportParserFuzzTests.XorAddressValue(c.Item1, c.Item2), c.Item2, out var back) && back == c.Item1));
    }

    /// <summary>UDP association frames (spec/turn.md §5.2): any type, peer and payload up to the limit.</summary>
    [Fact]
    public void Datagram_frame_write_then_TryParse_round_trips()
    {
        var cases = Gen.Zip(Gen.Choose(0, 255).Select(t => (DatagramFrameType)t), Gen.Zip(Peers, Gen.OneOf(Bytes(0, 300), Bytes(65_000, DatagramFrame.MaxPayload))));
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(200), Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var (type, (peer, payload)) = c;
            var buffer = new byte[DatagramFrame.MaxFrameLength];
            int n = DatagramFrame.Write(buffer, type, peer, payload);
            int r = DatagramFrame.TryParse(buffer.AsSpan(0, n), out var t, out var p, out var range);
            return r == n && t == type && p == peer && buffer.AsSpan(0, n)[range].SequenceEqual(payload)
                && DatagramFrame.TryParse(buffer.AsSpan(0, n - 1), out _, out _, out _) == 0;
        }));
    }

    private static Gen<string> HostPorts => Gen.Elements("relay:8080", "127.0.0.1:1", "[::1]:443", "relay.example.org:65535");

    /// <summary>JET (spec/jet.md §2–§3): a v2 request of any method and ids, in a packet with any mask, parses back to the same request.</summary>
    [Fact]
    public void Jet_request_packet_round_trips_with_any_mask()
    {
        var cases = Gen.Zip(Gen.Elements(JetMethod.Accept, JetMethod.Connect, JetMethod.Test), Gen.Zip(Guids, Gen.Zip(Guids, Gen.Zip(HostPorts, Gen.Choose(0, 255)))));
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var (method, (aid, (cid, (host, mask)))) = c;
            var packet = JetWire.BuildPacket(JetWire.BuildRequest(method, aid, cid, host), (byte)mask);
            if (JetWire.ParseHeader(packet, out int size, out byte m) != JetPacketError.None || size != packet.Length || m != mask) return false;
            var payload = packet[JetWire.HeaderLength..];
            JetWire.ApplyMask(payload, m);
            return JetWire.ParseRequest(payload, out var r, out _) == 0 && r == new JetRequest(method, 2, aid, cid, IsV1: false);
        }));
    }

    /// <summary>JET responses (§4): any status and headers of token names and printable values parse back.</summary>
    [Fact]
    public void Jet_response_round_trips()
    {
        var name = Gen.Elements("Jet-Version", "Jet-Instance", "Jet-Association", "Connection", "X-a_b");
        var value = Gen.Elements("2", "relay-b", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "Close", "a b:c");
        var cases = Gen.Zip(Gen.Choose(100, 999), Gen.Zip(name, value).ListOf().Select(l => l.Take(16).ToList()));
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var headers = c.Item2.Select(h => new KeyValuePair<string, string>(h.Item1, h.Item2)).ToArray();
            var payload = System.Text.Encoding.ASCII.GetBytes(JetWire.BuildResponse(c.Item1, headers));
            return JetWire.TryParseResponse(payload, out var r, out _) && r!.Status == c.Item1 && r.Headers.SequenceEqual(headers);
        }));
    }

    private static Gen<IPEndPoint?> AsportAddresses => Gen.OneOf(
        Gen.Constant<IPEndPoint?>(null),
        Gen.Zip(Bytes(4, 4), Gen.Choose(0, 65535)).Select(t => (IPEndPoint?)new IPEndPoint(new IPAddress(t.Item1), t.Item2)),
        Gen.Zip(Bytes(16, 16), Gen.Choose(0, 65535)).Select(t => (IPEndPoint?)new IPEndPoint(new IPAddress(t.Item1), t.Item2)));

    /// <summary>ASPORT (spec/asport.md §3): ClientHello, ServerHello and Packet headers round trip (IPv4-mapped peers read as IPv4).</summary>
    [Fact]
    public void Asport_commands_round_trip()
    {
        var hellos = Gen.Zip(Guids, Gen.Zip(Bytes(32, 32), Gen.Zip(Gen.Choose(0, 4), Gen.Zip(Gen.Choose(0, 65535), Gen.Choose(0, 65535)))));
        Check.One(Quick, Prop.ForAll(hellos.ToArbitrary(), c =>
        {
            var (user, (token, (mode, (a, b)))) = c;
            var hello = new ClientHello(user, token, (ForwardMode)mode, (ushort)Math.Min(a, b), (ushort)Math.Max(a, b));
            var buf = new byte[AsportWire.ClientHelloSize];
            AsportWire.WriteClientHello(buf, hello);
            return AsportWire.TryReadClientHello(buf, out var back) && back.User == user && back.Token.SequenceEqual(token)
                && back.Mode == hello.Mode && back.PortStart == hello.PortStart && back.PortEnd == hello.PortEnd;
        }));
        Check.One(Quick, Prop.ForAll(Gen.Zip(Gen.Choose(0, 4), Gen.Choose(0, 65535)).ToArbitrary(), c =>
        {
            var buf = new byte[5];
            int n = AsportWire.WriteServerHello(buf, (ServerHelloCode)c.Item1, (ushort)c.Item2);
            return AsportWire.TryReadServerHello(buf.AsSpan(0, n), out var code, out var port) && (int)code == c.Item1 && (c.Item1 != 0 || port == c.Item2);
        }));
        var headers = Gen.Zip(Gen.Zip(Gen.Choose(0, 65535), Gen.Choose(0, 65535)), Gen.Zip(Gen.Zip(Gen.Choose(0, 255), Gen.Choose(0, 255)), Gen.Zip(Gen.Choose(0, 65535), AsportAddresses)));
        Check.One(Quick, Prop.ForAll(headers.ToArbitrary(), c =>
        {
            var ((assoc, pkt), ((total, id), (size, address))) = c;
            var h = new PacketHeader((ushort)assoc, (ushort)pkt, (byte)total, (byte)id, (ushort)size, address);
            var buf = new byte[64];
            int n = AsportWire.WritePacketHeader(buf, h);
            var want = address is { Address.IsIPv4MappedToIPv6: true } ? new IPEndPoint(address.Address.MapToIPv4(), address.Port) : address;
            return AsportWire.TryReadPacketHeader(buf.AsSpan(2, n - 2), out var back, out int used) && used == n - 2
                && back.AssocId == h.AssocId && back.PacketId == h.PacketId && back.FragmentTotal == h.FragmentTotal
                && back.FragmentId == h.FragmentId && back.Size == h.Size && Equals(back.Address, want);
        }));
    }

    /// <summary>ASPORT fragmentation (§3.4): any payload cut for any datagram size and delivered in any order reassembles to itself, once.</summary>
    [Fact]
    public void Asport_fragments_in_any_order_reassemble_to_the_payload()
    {
        // The first fragment always names the peer (a first fragment without an address is rejected, §3.4).
        var cases = Gen.Zip(Bytes(0, 5000), Gen.Zip(Gen.Choose(40, 1400), Gen.Zip(AsportAddresses.Where(a => a is not null), Gen.Choose(0, int.MaxValue))));
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(300), Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var (payload, (max, (address, seed))) = c;
            int total = AsportWire.FragmentCount(payload.Length, max, address);
            if (total < 0) return true; // more than 255 fragments: not sent (spec)
            var dgram = new byte[max];
            var fragments = Enumerable.Range(0, total).Select(i => dgram[..AsportWire.WriteFragment(dgram, 9, 77, i, total, payload, max, address)]).ToList();
            if (fragments.Any(f => f.Length > max)) return false;
            var rng = new Random(seed);
            var reassembly = new AsportReassembly(TimeSpan.FromSeconds(15));
            int completes = 0;
            bool same = false;
            foreach (var f in fragments.OrderBy(_ => rng.Next()))
            {
                if (!AsportWire.TryReadPacketHeader(f.AsSpan(2), out var h, out int used)) return false;
                var r = reassembly.Offer(h, f.AsSpan(2 + used), 0, out var whole, out int length, out var from);
                if (r == AsportReassembly.Result.Rejected) return false;
                if (r != AsportReassembly.Result.Complete) continue;
                completes++;
                var want = address is { Address.IsIPv4MappedToIPv6: true } ? new IPEndPoint(address.Address.MapToIPv4(), address.Port) : address;
                same = whole.AsSpan(0, length).SequenceEqual(payload) && Equals(from, want);
                AsportReassembly.ReturnBuffer(whole!);
            }
            return completes == 1 && same && reassembly.PendingCount == 0;
        }));
    }

    /// <summary>RUD varints (spec/rud.md §2): every value up to 2^62 - 1 in its shortest form, read back whole.</summary>
    [Fact]
    public void Rud_varint_round_trips()
    {
        var values = Gen.OneOf(Gen.Choose(0, 70_000).Select(i => (ulong)i), Bytes(8, 8).Select(b => BinaryPrimitives.ReadUInt64BigEndian(b) & RudWire.MaxVarint));
        Check.One(Quick, Prop.ForAll(values.ToArbitrary(), v =>
        {
            var buf = new byte[8];
            int n = RudWire.WriteVarint(buf, v);
            int pos = 0;
            return n == RudWire.VarintLength(v) && RudWire.TryReadVarint(buf, ref pos, out var back) && back == v && pos == n;
        }));
    }

    /// <summary>RUD frames (§3.2): STREAM, DATAGRAM, MAX_STREAM_DATA, RESET_STREAM and CLOSE written in sequence read back in order.</summary>
    [Fact]
    public void Rud_frames_round_trip()
    {
        var ids = Gen.Zip(Gen.Choose(0, 100_000), Gen.Choose(0, 1)).Select(t => ((ulong)t.Item1, t.Item2));
        var cases = Gen.Zip(ids, Gen.Zip(Gen.Choose(0, int.MaxValue), Gen.Zip(Bytes(0, 300), Gen.Elements(true, false))));
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var ((seq, side), (offset, (data, final))) = c;
            ulong stream = RudWire.MakeStreamId(seq, StreamKind.Asynchronous, side), dgram = RudWire.MakeStreamId(seq, StreamKind.Datagram, side);
            var buf = new byte[1500];
            int n = RudWire.WriteStreamFrame(buf, stream, (ulong)offset, data, final);
            n += RudWire.WriteDatagramFrame(buf.AsSpan(n), dgram, (ulong)offset, data);
            n += RudWire.WriteMaxStreamData(buf.AsSpan(n), stream, (ulong)offset * 3);
            n += RudWire.WriteResetStream(buf.AsSpan(n), stream, 7, (ulong)offset);
            n += RudWire.WriteClose(buf.AsSpan(n), 5, data.AsSpan(0, Math.Min(data.Length, 40)));
            var p = buf.AsSpan(0, n);
            int pos = 0;
            return RudWire.TryReadFrame(p, ref pos, out var f1) && f1.Type == (final ? FrameType.StreamFinal : FrameType.Stream) && f1.StreamId == stream
                    && f1.Offset == (ulong)offset && p.Slice(f1.DataOffset, f1.DataLength).SequenceEqual(data)
                && RudWire.TryReadFrame(p, ref pos, out var f2) && f2.Type == FrameType.Datagram && f2.StreamId == dgram && f2.Offset == (ulong)offset
                    && p.Slice(f2.DataOffset, f2.DataLength).SequenceEqual(data)
                && RudWire.TryReadFrame(p, ref pos, out var f3) && f3.Type == FrameType.MaxStreamData && f3.Offset == (ulong)offset * 3
                && RudWire.TryReadFrame(p, ref pos, out var f4) && f4.Type == FrameType.ResetStream && f4.Code == 7 && f4.Offset == (ulong)offset
                && RudWire.TryReadFrame(p, ref pos, out var f5) && f5.Type == FrameType.Close && f5.Code == 5 && f5.DataLength == Math.Min(data.Length, 40)
                && pos == n;
        }));
    }

    /// <summary>RUD handshake messages (§4.1): Hello, Exchange/Complete, Challenge/Defer carry back their ids, keys and tokens.</summary>
    [Fact]
    public void Rud_handshake_messages_round_trip()
    {
        var cases = Gen.Zip(Bytes(8, 8).Select(b => BinaryPrimitives.ReadUInt64BigEndian(b) | 1), Gen.Zip(Bytes(32, 32), Bytes(1, 255)));
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var (id, (key, token)) = c;
            var s = new byte[RudWire.HandshakeSize];
            RudWire.WriteHello(s, id);
            if (!RudWire.TryParseHello(s, out var hello) || hello != id) return false;
            foreach (bool complete in new[] { false, true })
            {
                int at = RudWire.WriteExchangePlaintext(s, complete, id, key, complete ? token : []);
                if (!RudWire.TryParseExchange(s, out bool isComplete, out var initiator, out int tokenAt, out int tokenLength, out int mezz)
                    || isComplete != complete || initiator != id || !s.AsSpan(s.Length - 32, 32).SequenceEqual(key) || mezz != at
                    || (complete && !s.AsSpan(tokenAt, tokenLength).SequenceEqual(token))) return false;
            }
            foreach (bool challenge in new[] { true, false })
            {
                int n = RudWire.WriteChallengeOrDefer(s.AsSpan(0, RudWire.ChallengeOrDeferLength(challenge, token.Length, token.Length % 7)), id, challenge ? key : [], token);
                if (!RudWire.TryParseChallengeOrDefer(s.AsSpan(0, n), challenge, out int k, out int t, out int l)
                    || (challenge && !s.AsSpan(k, 32).SequenceEqual(key)) || !s.AsSpan(t, l).SequenceEqual(token)) return false;
            }
            return true;
        }));
    }
}
