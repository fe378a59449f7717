using System.Buffers;
using System.Net;
using BenchmarkDotNet.Attributes;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Socks;
using PtHost.Transports.Asport;
using PtHost.Transports.Jet;
using PtHost.Transports.Rud;
using PtHost.Turn;

namespace PtHost.MicroBenchmarks;

/// <summary>One message of each hot parser, parsed from bytes already in memory (what a session does once per message).</summary>
[MemoryDiagnoser]
public class ParserBenchmarks
{
    private byte[] _socksIPv4 = [], _socksDomain = [], _preamble = [], _stun = [], _frame = [], _jet = [], _jetScratch = [], _asport = [], _rud = [];

    [GlobalSetup]
    public void Setup()
    {
        _socksIPv4 = [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];
        _socksDomain = [5, 1, 0, 3, 11, .. "example.com"u8, 0x01, 0xbb];
        var dest = "example.com:443"u8.ToArray();
        _preamble = [(byte)'P', (byte)'T', (byte)'P', 1, 0, (byte)dest.Length, .. dest];
        _stun = Turn.AllocateRequest();
        var peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.1"), 3478));
        _frame = new byte[2 + 8 + 1200];
        DatagramFrame.Write(_frame, DatagramFrameType.Data, peer, new byte[1200]);
        _jet = JetWire.BuildPacket(JetWire.BuildRequest(JetMethod.Connect, Guid.NewGuid(), Guid.NewGuid(), "127.0.0.1:8080"));
        _jetScratch = new byte[_jet.Length];
        _asport = new byte[64];
        int n = AsportWire.WritePacketHeader(_asport, new PacketHeader(1, 2, 1, 0, 4, new IPEndPoint(IPAddress.Parse("192.0.2.1"), 53)));
        _asport = _asport[..(n + 4)];
        // A RUD data packet as decrypted: header, header block with an ACK, one STREAM frame of 1200 bytes, tag.
        var p = new byte[1400];
        n = RudWire.WriteDataHeader(p, 0x1122334455667788, 0, 1000);
        p[n++] = RudWire.FlagAck;
        n += RudWire.WriteVarint(p.AsSpan(n), 999);
        n += RudWire.WriteVarint(p.AsSpan(n), 25);
        p[n++] = 1;
        p[n++] = 0xff;
        n += RudWire.WriteStreamFrame(p.AsSpan(n), RudWire.MakeStreamId(0, StreamKind.Asynchronous, 0), 1_000_000, new byte[1200], final: false);
        _rud = p[..(n + RudKeys.TagSize)];
    }

    [Benchmark(Description = "SOCKS5 request, IPv4")]
    public Destination? Socks5RequestIPv4()
    {
        var seq = new ReadOnlySequence<byte>(_socksIPv4);
        Socks5Parser.TryParseRequest(ref seq, out var d, out _);
        return d;
    }

    [Benchmark(Description = "SOCKS5 request, domain")]
    public Destination? Socks5RequestDomain()
    {
        var seq = new ReadOnlySequence<byte>(_socksDomain);
        Socks5Parser.TryParseRequest(ref seq, out var d, out _);
        return d;
    }

    [Benchmark(Description = "plain preamble (header + destination)")]
    public Destination? PlainPreamble()
    {
        int length = SessionPreamble.ParseHeader(_preamble);
        return SessionPreamble.ParseDestination(_preamble.AsSpan(SessionPreamble.HeaderLength, length));
    }

    [Benchmark(Description = "STUN message (Allocate, 5 attributes, integrity, fingerprint)")]
    public int StunMessage()
    {
        if (Stun.TryParse(_stun, out var m) != StunParseError.None) return -1;
        int n = 0;
        foreach (var a in m.Attributes) n += a.Value.Length;
        return n;
    }

    [Benchmark(Description = "UDP association frame (1200-byte datagram)")]
    public int DatagramFrameParse() => DatagramFrame.TryParse(_frame, out _, out _, out _);

    [Benchmark(Description = "JET packet header")]
    public int JetPacketHeader() => JetWire.ParseHeader(_jet, out int size, out _) == JetPacketError.None ? size : -1;

    [Benchmark(Description = "JET packet, header + unmask + request")]
    public JetRequest? JetPacketRequest()
    {
        JetWire.ParseHeader(_jet, out int size, out byte mask);
        var payload = _jetScratch.AsSpan(0, size - JetWire.HeaderLength);
        _jet.AsSpan(JetWire.HeaderLength, payload.Length).CopyTo(payload);
        JetWire.ApplyMask(payload, mask);
        JetWire.ParseRequest(payload, out var request, out _);
        return request;
    }

    [Benchmark(Description = "ASPORT Packet command header")]
    public int AsportCommand() =>
        AsportWire.TryReadHeader(_asport, out var c) && c == PtHost.Transports.Asport.AsportCommand.Packet
        && AsportWire.TryReadPacketHeader(_asport.AsSpan(2), out var h, out int used) ? h.Size + used : -1;

    [Benchmark(Description = "RUD data header + header block + frames")]
    public int RudHeader()
    {
        if (!RudWire.TryParseDataHeader(_rud, out _, out int headerLength)) return -1;
        var plain = _rud.AsSpan(headerLength, _rud.Length - headerLength - RudKeys.TagSize);
        if (!RudWire.TryParseHeaderBlock(plain, out _, out int pos)) return -1;
        int bytes = 0;
        while (pos < plain.Length && RudWire.TryReadFrame(plain, ref pos, out var f)) bytes += f.DataLength;
        return bytes;
    }
}
