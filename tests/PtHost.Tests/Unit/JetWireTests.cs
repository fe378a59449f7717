using System.Text;
using PtHost.Transports.Jet;

namespace PtHost.Tests.Unit;

/// <summary>spec/jet.md §2–4: the JET_PACKET header, the mask, and the HTTP-like request and response.</summary>
public class JetWireTests
{
    private static readonly Guid Aid = Guid.Parse("3f2504e0-4f89-11d3-9a0c-0305e82c3301");
    private static readonly Guid Cid = Guid.Parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8");

    private static byte[] Payload(string text) => Encoding.ASCII.GetBytes(text);

    [Fact]
    public void Packet_is_signature_size_including_header_flags_0_mask_then_the_masked_payload()
    {
        byte[] p = JetWire.BuildPacket("AB", 0x73);
        Assert.Equal(new byte[] { 0x4A, 0x45, 0x54, 0x00, 0x00, 0x0A, 0x00, 0x73, (byte)('A' ^ 0x73), (byte)('B' ^ 0x73) }, p);
    }

    [Fact]
    public void Header_round_trips_and_reports_size_and_mask()
    {
        byte[] p = JetWire.BuildPacket(JetWire.BuildRequest(JetMethod.Accept, Aid, Cid, "relay"), 0x5a);
        Assert.Equal(JetPacketError.None, JetWire.ParseHeader(p, out int size, out byte mask));
        Assert.Equal(p.Length, size);
        Assert.Equal(0x5a, mask);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Any_wrong_signature_byte_is_a_bad_signature(int index)
    {
        byte[] p = JetWire.BuildPacket("x");
        p[index] ^= 0x20;
        Assert.Equal(JetPacketError.BadSignature, JetWire.ParseHeader(p, out _, out _));
    }

    [Fact]
    public void A_wrong_first_byte_is_known_before_8_bytes_arrive()
    {
        Assert.Equal(JetPacketError.BadSignature, JetWire.ParseHeader("GET"u8, out _, out _));
        Assert.Equal(JetPacketError.Incomplete, JetWire.ParseHeader("JET\0\0"u8, out _, out _));
        Assert.Equal(JetPacketError.Incomplete, JetWire.ParseHeader([], out _, out _));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    public void A_size_below_8_is_refused(int size)
    {
        byte[] p = [0x4A, 0x45, 0x54, 0x00, 0, (byte)size, 0, 0x73];
        Assert.Equal(JetPacketError.SizeTooSmall, JetWire.ParseHeader(p, out _, out _));
    }

    [Fact]
    public void Flags_are_ignored_on_read()
    {
        byte[] p = JetWire.BuildPacket("x");
        p[6] = 0xff;
        Assert.Equal(JetPacketError.None, JetWire.ParseHeader(p, out _, out _));
    }

    [Fact]
    public void A_payload_larger_than_65527_bytes_cannot_be_built()
    {
        Assert.Throws<ArgumentException>(() => JetWire.BuildPacket(new string('a', JetWire.MaxPayload + 1)));
        Assert.Equal(ushort.MaxValue, JetWire.BuildPacket(new string('a', JetWire.MaxPayload)).Length);
    }

    [Fact]
    public void Masking_twice_is_the_identity_and_mask_0_leaves_bytes_alone()
    {
        byte[] data = Payload("hello");
        JetWire.ApplyMask(data, 0x73);
        Assert.NotEqual(Payload("hello"), data);
        JetWire.ApplyMask(data, 0x73);
        Assert.Equal(Payload("hello"), data);
        JetWire.ApplyMask(data, 0);
        Assert.Equal(Payload("hello"), data);
    }

    [Theory]
    [InlineData(JetMethod.Accept, "accept")]
    [InlineData(JetMethod.Connect, "connect")]
    [InlineData(JetMethod.Test, "test")]
    public void V2_requests_parse_back(JetMethod method, string name)
    {
        string text = JetWire.BuildRequest(method, Aid, Cid, "relay.example:8080");
        Assert.StartsWith($"GET /jet/{name}/{Aid:D}/{Cid:D} HTTP/1.1\r\nHost: relay.example:8080\r\n", text);
        Assert.Contains("Jet-Version: 2\r\n", text);
        Assert.Equal(0, JetWire.ParseRequest(Payload(text), out var r, out _));
        Assert.Equal(new JetRequest(method, 2, Aid, Cid, false), r);
    }

    [Fact]
    public void The_path_is_read_case_insensitively()
    {
        string text = $"GET /JET/ACCEPT/{Aid.ToString("D").ToUpperInvariant()}/{Cid:D} HTTP/1.1\r\nHost: h\r\nJet-Version: 2\r\n\r\n";
        Assert.Equal(0, JetWire.ParseRequest(Payload(text), out var r, out _));
        Assert.Equal(JetMethod.Accept, r!.Method);
        Assert.Equal(Aid, r.Association);
    }

    [Theory]
    [InlineData("POST")]
    [InlineData("PUT")]
    [InlineData("get")]
    public void Only_GET_is_accepted_405(string method)
    {
        string text = $"{method} /jet/accept/{Aid:D}/{Cid:D} HTTP/1.1\r\nHost: h\r\nJet-Version: 2\r\n\r\n";
        Assert.Equal(405, JetWire.ParseRequest(Payload(text), out _, out _));
    }

    [Fact]
    public void Sixteen_headers_are_accepted_seventeen_are_431()
    {
        string Build(int n) => $"GET /jet/accept/{Aid:D}/{Cid:D} HTTP/1.1\r\nHost: h\r\nJet-Version: 2\r\n"
            + string.Concat(Enumerable.Range(0, n - 2).Select(i => $"X-{i}: v\r\n")) + "\r\n";
        Assert.Equal(0, JetWire.ParseRequest(Payload(Build(16)), out _, out _));
        Assert.Equal(431, JetWire.ParseRequest(Payload(Build(17)), out _, out _));
    }

    [Fact]
    public void A_v2_request_without_Jet_Version_is_400()
    {
        string text = $"GET /jet/accept/{Aid:D}/{Cid:D} HTTP/1.1\r\nHost: h\r\n\r\n";
        Assert.Equal(400, JetWire.ParseRequest(Payload(text), out _, out string? problem));
        Assert.Contains("Jet-Version", problem);
    }

    [Fact]
    public void A_non_numeric_Jet_Version_is_400()
    {
        string text = $"GET /jet/accept/{Aid:D}/{Cid:D} HTTP/1.1\r\nHost: h\r\nJet-Version: two\r\n\r\n";
        Assert.Equal(400, JetWire.ParseRequest(Payload(text), out _, out _));
    }

    [Fact]
    public void A_v2_request_without_Host_is_400()
    {
        string text = $"GET /jet/accept/{Aid:D}/{Cid:D} HTTP/1.1\r\nJet-Version: 2\r\n\r\n";
        Assert.Equal(400, JetWire.ParseRequest(Payload(text), out _, out string? problem));
        Assert.Contains("Host", problem);
    }

    [Theory]
    [InlineData("/jet/accept/not-a-uuid/6ba7b810-9dad-11d1-80b4-00c04fd430c8")]
    [InlineData("/jet/listen/3f2504e0-4f89-11d3-9a0c-0305e82c3301/6ba7b810-9dad-11d1-80b4-00c04fd430c8")]
    [InlineData("/jet/accept/3f2504e0-4f89-11d3-9a0c-0305e82c3301")]
    [InlineData("/index.html")]
    public void Other_paths_are_404(string path)
    {
        string text = $"GET {path} HTTP/1.1\r\nHost: h\r\nJet-Version: 2\r\n\r\n";
        Assert.Equal(404, JetWire.ParseRequest(Payload(text), out _, out _));
    }

    [Theory]
    [InlineData("GET /jet HTTP/1.1\r\nHost: h\r\n")] // no empty line
    [InlineData("GET /\r\nJet-Method: Accept\r\n\r\n")] // no version in the request line
    [InlineData("GET / HTTP/1.1\r\nJet-Method Accept\r\n\r\n")] // header without a colon
    [InlineData("GET / HTTP/1.1\r\nJet-Method: Accept\r\n\r\nextra")] // bytes after the headers
    [InlineData("GET / HTTP/1.1\r\n\r\n")] // v1 without Jet-Method
    [InlineData("GET / HTTP/1.1\r\nJet-Method: Connect\r\n\r\n")] // v1 connect without Jet-Association
    [InlineData("GET / HTTP/1.1\r\nJet-Method: Connect\r\nJet-Association: 12\r\n\r\n")]
    public void Malformed_requests_are_400(string text)
    {
        Assert.Equal(400, JetWire.ParseRequest(Payload(text), out _, out string? problem));
        Assert.NotNull(problem);
    }

    [Fact]
    public void A_payload_read_with_the_wrong_mask_is_400()
    {
        byte[] data = Payload(JetWire.BuildRequest(JetMethod.Accept, Aid, Cid, "h"));
        JetWire.ApplyMask(data, 0x73);
        Assert.Equal(400, JetWire.ParseRequest(data, out _, out _));
    }

    [Fact]
    public void V1_accept_and_connect_parse()
    {
        Assert.Equal(0, JetWire.ParseRequest(Payload(JetWire.BuildV1Accept("h")), out var accept, out _));
        Assert.Equal(new JetRequest(JetMethod.Accept, 1, Guid.Empty, Guid.Empty, true), accept);
        Assert.Equal(0, JetWire.ParseRequest(Payload(JetWire.BuildV1Connect("h", Aid)), out var connect, out _));
        Assert.Equal(new JetRequest(JetMethod.Connect, 1, Aid, Guid.Empty, true), connect);
    }

    [Fact]
    public void V1_any_Jet_Method_other_than_accept_is_connect()
    {
        string text = $"GET / HTTP/1.1\r\nJet-Method: Whatever\r\nJet-Association: {Aid:D}\r\n\r\n";
        Assert.Equal(0, JetWire.ParseRequest(Payload(text), out var r, out _));
        Assert.Equal(JetMethod.Connect, r!.Method);
        Assert.Equal(1, r.Version);
    }

    [Theory]
    [InlineData("HTTP/1.1 200 OK\r\n\r\n", 200)]
    [InlineData("HTTP/1.1 200 OK 200\r\n\r\n", 200)] // the reference's status line
    [InlineData("HTTP/1.0 404\r\n\r\n", 404)]
    [InlineData("HTTP/1.1 400 Bad Request\r\nJet-Version: 2\r\n\r\n", 400)]
    public void Status_lines_are_parsed_leniently(string text, int status)
    {
        Assert.True(JetWire.TryParseResponse(Payload(text), out var r, out _));
        Assert.Equal(status, r!.Status);
    }

    [Theory]
    [InlineData("HTTP/2 200 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 20 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 2000 OK\r\n\r\n")]
    [InlineData("ICY 200 OK\r\n\r\n")]
    [InlineData("HTTP/1.1 200 OK\r\n")]
    public void Unusable_status_lines_are_refused(string text)
    {
        Assert.False(JetWire.TryParseResponse(Payload(text), out _, out _));
    }

    [Fact]
    public void Response_headers_round_trip()
    {
        string text = JetWire.BuildResponse(200, new("Jet-Version", "1"), new("Jet-Association", Aid.ToString("D")), new("Jet-Timeout", "300"));
        Assert.StartsWith("HTTP/1.1 200 OK\r\n", text);
        Assert.True(JetWire.TryParseResponse(Payload(text), out var r, out _));
        Assert.Equal(Aid.ToString("D"), r!.Header("jet-association"));
        Assert.Equal("300", r.Header("Jet-Timeout"));
    }

    [Fact]
    public void Random_payloads_never_throw()
    {
        var rng = new Random(9);
        for (int i = 0; i < 20_000; i++)
        {
            byte[] data = new byte[rng.Next(0, 200)];
            rng.NextBytes(data);
            if (i % 2 == 0) "GET / HTTP/1.1\r\n"u8.ToArray().AsSpan(0, Math.Min(16, data.Length)).CopyTo(data);
            JetWire.ParseRequest(data, out _, out _);
            JetWire.TryParseResponse(data, out _, out _);
            JetWire.ParseHeader(data, out _, out _);
        }
    }
}
