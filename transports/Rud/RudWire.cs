using System.Buffers.Binary;
using PtHost.Contract;
using PtHost.Net.Udp;

namespace PtHost.Transports.Rud;

/// <summary>Packet and message types (spec/rud.md §3).</summary>
public static class PacketType
{
    public const byte Data = 0x01;
    public const byte DataPhase1 = 0x81;
    public const byte Hello = 0x02;          // initiator
    public const byte Challenge = 0x02;      // responder
    public const byte Exchange = 0x03;       // initiator
    public const byte ResponderComplete = 0x03;
    public const byte InitiatorComplete = 0x04;
    public const byte Defer = 0x04;          // responder
}

/// <summary>Frame types (spec/rud.md §3.2).</summary>
public static class FrameType
{
    public const byte Padding = 0x00;
    public const byte Ping = 0x01;
    public const byte ResetStream = 0x04;
    public const byte MaxStreamData = 0x05;
    public const byte Datagram = 0x06;
    public const byte Close = 0x07;
    public const byte Stream = 0x08;
    public const byte StreamFinal = 0x09;
    public const byte PathChallenge = 0x0a;
    public const byte PathResponse = 0x0b;
}

/// <summary>
/// Pure encoders and decoders over spans (spec/rud.md §2–§4): no sockets, no state, no
/// allocation; every Try* returns false on malformed input and never throws for it.
/// </summary>
public static class RudWire
{
    public const int IdSize = 8;
    /// <summary>The wire version (§4.1): 0x02 since initiator authentication (§5.5); version 0x01 peers are not understood.</summary>
    public const int Version = 0x02;
    public const int MaxPacketSize = 1350;
    /// <summary>The larger packet size a connection uses once a probe of it was acknowledged (§9.5): a 1500-byte IPv6 path less its headers.</summary>
    public const int ProbedPacketSize = 1452;
    public const int MaxReceiveSize = 1500;
    public const int MaxBitfieldBytes = 32;
    public const int MaxTokenLength = 255;
    public const ulong MaxVarint = (1UL << 62) - 1;

    // ---- varints (§2) ----

    public static int VarintLength(ulong v) => v < 64 ? 1 : v < 16384 ? 2 : v < (1UL << 30) ? 4 : 8;

    public static int WriteVarint(Span<byte> s, ulong v)
    {
        switch (VarintLength(v))
        {
            case 1: s[0] = (byte)v; return 1;
            case 2: BinaryPrimitives.WriteUInt16BigEndian(s, (ushort)(v | 0x4000)); return 2;
            case 4: BinaryPrimitives.WriteUInt32BigEndian(s, (uint)v | 0x8000_0000); return 4;
            default:
                if (v > MaxVarint) throw new ArgumentOutOfRangeException(nameof(v));
                BinaryPrimitives.WriteUInt64BigEndian(s, v | 0xC000_0000_0000_0000); return 8;
        }
    }

    public static bool TryReadVarint(ReadOnlySpan<byte> s, ref int pos, out ulong v)
    {
        v = 0;
        if (pos >= s.Length) return false;
        int len = 1 << (s[pos] >> 6);
        if (s.Length - pos < len) return false;
        v = s[pos] & 0x3Fu;
        for (int i = 1; i < len; i++) v = (v << 8) | s[pos + i];
        pos += len;
        return true;
    }

    public static ulong ReadId(ReadOnlySpan<byte> s) => BinaryPrimitives.ReadUInt64BigEndian(s);

    public static void WriteId(Span<byte> s, ulong id) => BinaryPrimitives.WriteUInt64BigEndian(s, id);

    // ---- data packet (§3.1) ----

    /// <summary>Data header (§3.1): stream identifier 8 | type 1 | sent index, low 32 bits.</summary>
    public const int DataHeaderSize = HeaderProtection.HeaderSize;

    /// <summary>Parses an unprotected Data packet's header: the truncated sent index (expand with <see cref="ExpandSentIndex"/>).</summary>
    public static bool TryParseDataHeader(ReadOnlySpan<byte> packet, out uint truncatedIndex, out int headerLength)
    {
        truncatedIndex = 0;
        headerLength = 0;
        if (packet.Length < DataHeaderSize + 1 + RudKeys.TagSize) return false;
        if (packet[IdSize] is not (PacketType.Data or PacketType.DataPhase1)) return false;
        truncatedIndex = BinaryPrimitives.ReadUInt32BigEndian(packet[(IdSize + 1)..]);
        headerLength = DataHeaderSize;
        return true;
    }

    /// <summary>The full sent index nearest to the next expected one (RFC 9000 §A.3 with 32 bits, §3.1).</summary>
    public static ulong ExpandSentIndex(ulong expected, uint truncated)
    {
        const ulong Window = 1UL << 32, Half = Window / 2, Mask = Window - 1;
        ulong candidate = (expected & ~Mask) | truncated;
        if (candidate + Half <= expected && candidate < (1UL << 62) - Window) return candidate + Window;
        if (candidate > expected + Half && candidate >= Window) return candidate - Window;
        return candidate;
    }

    /// <summary>Writes stream identifier, type and the sent index's low 32 bits; returns the header length (13).</summary>
    public static int WriteDataHeader(Span<byte> packet, ulong streamIdentifier, int phase, ulong sentIndex)
    {
        WriteId(packet, streamIdentifier);
        packet[IdSize] = phase == 0 ? PacketType.Data : PacketType.DataPhase1;
        BinaryPrimitives.WriteUInt32BigEndian(packet[(IdSize + 1)..], (uint)sentIndex);
        return DataHeaderSize;
    }

    // ---- header block (§3.1) ----

    public const byte FlagAck = 0x01;
    public const byte FlagRetransmit = 0x02;

    /// <summary>Parses a header block; returns false when malformed. <paramref name="bitfield"/> is a slice of the payload.</summary>
    public static bool TryParseHeaderBlock(ReadOnlySpan<byte> payload, out HeaderBlock header, out int length)
    {
        header = default;
        length = 0;
        if (payload.IsEmpty) return false;
        byte flags = payload[0];
        if ((flags & ~(FlagAck | FlagRetransmit)) != 0) return false;
        int pos = 1;
        if ((flags & FlagAck) != 0)
        {
            if (!TryReadVarint(payload, ref pos, out ulong ackIndex) || !TryReadVarint(payload, ref pos, out ulong delay)) return false;
            if (pos >= payload.Length) return false;
            int n = payload[pos++];
            if (n > MaxBitfieldBytes || payload.Length - pos < n) return false;
            header.HasAck = true;
            header.AckIndex = ackIndex;
            header.AckDelayMicroseconds = delay;
            header.BitfieldOffset = pos;
            header.BitfieldLength = n;
            pos += n;
        }
        if ((flags & FlagRetransmit) != 0)
        {
            if (!TryReadVarint(payload, ref pos, out ulong r)) return false;
            header.HasRetransmit = true;
            header.RetransmitIndex = r;
        }
        length = pos;
        return true;
    }

    // ---- frames (§3.2) ----

    /// <summary>
    /// Reads the next frame at <paramref name="pos"/>; false when the frame is malformed or
    /// truncated. A PADDING byte is returned as a frame of its own.
    /// </summary>
    public static bool TryReadFrame(ReadOnlySpan<byte> payload, ref int pos, out Frame frame)
    {
        frame = default;
        if (pos >= payload.Length) return false;
        byte type = payload[pos++];
        frame.Type = type;
        switch (type)
        {
            case FrameType.Padding:
            {
                // A run of PADDING frames is read as one (a full packet can end in dozens).
                int more = payload[pos..].IndexOfAnyExcept((byte)FrameType.Padding);
                pos = more < 0 ? payload.Length : pos + more;
                return true;
            }
            case FrameType.Ping:
                return true;
            case FrameType.PathChallenge:
            case FrameType.PathResponse:
                if (payload.Length - pos < 8) return false;
                frame.DataOffset = pos;
                frame.DataLength = 8;
                pos += 8;
                return true;
            case FrameType.ResetStream:
                return TryReadVarint(payload, ref pos, out frame.StreamId) && TryReadVarint(payload, ref pos, out frame.Code)
                    && TryReadVarint(payload, ref pos, out frame.Offset) && ValidStreamId(frame.StreamId);
            case FrameType.MaxStreamData:
                return TryReadVarint(payload, ref pos, out frame.StreamId) && TryReadVarint(payload, ref pos, out frame.Offset) && ValidStreamId(frame.StreamId);
            case FrameType.Datagram:
            {
                if (!TryReadVarint(payload, ref pos, out frame.StreamId) || !TryReadVarint(payload, ref pos, out frame.Offset)) return false;
                if (pos >= payload.Length || payload[pos++] != 1) return false; // packet count
                if (!TryReadVarint(payload, ref pos, out ulong len) || len > (ulong)(payload.Length - pos)) return false;
                frame.DataOffset = pos;
                frame.DataLength = (int)len;
                pos += (int)len;
                return ValidStreamId(frame.StreamId) && StreamKindOf(frame.StreamId) == StreamKind.Datagram;
            }
            case FrameType.Close:
            {
                if (!TryReadVarint(payload, ref pos, out frame.Code) || !TryReadVarint(payload, ref pos, out ulong len) || len > (ulong)(payload.Length - pos)) return false;
                frame.DataOffset = pos;
                frame.DataLength = (int)len;
                pos += (int)len;
                return true;
            }
            case FrameType.Stream:
            case FrameType.StreamFinal:
            {
                if (!TryReadVarint(payload, ref pos, out frame.StreamId) || !TryReadVarint(payload, ref pos, out frame.Offset)) return false;
                if (!TryReadVarint(payload, ref pos, out ulong len) || len > (ulong)(payload.Length - pos)) return false;
                if (frame.Offset + len > MaxVarint) return false;
                frame.DataOffset = pos;
                frame.DataLength = (int)len;
                pos += (int)len;
                return ValidStreamId(frame.StreamId) && StreamKindOf(frame.StreamId) != StreamKind.Datagram;
            }
            default:
                return false;
        }
    }

    public static bool ValidStreamId(ulong id) => ((id >> 1) & 3) != 3;

    public static StreamKind StreamKindOf(ulong id) => (StreamKind)((id >> 1) & 3);

    /// <summary>0 for a stream the initiator opened, 1 for the responder's (§8.1).</summary>
    public static int StreamSide(ulong id) => (int)(id & 1);

    public static ulong StreamSequence(ulong id) => id >> 3;

    public static ulong MakeStreamId(ulong sequence, StreamKind kind, int side) => (sequence << 3) | ((ulong)(uint)kind << 1) | (uint)side;

    /// <summary>Length of a STREAM frame header for these values (type, id, offset, length).</summary>
    public static int StreamFrameOverhead(ulong streamId, ulong offset, int length) =>
        1 + VarintLength(streamId) + VarintLength(offset) + VarintLength((ulong)length);

    public static int WriteStreamFrame(Span<byte> s, ulong streamId, ulong offset, ReadOnlySpan<byte> data, bool final)
    {
        int pos = 0;
        s[pos++] = final ? FrameType.StreamFinal : FrameType.Stream;
        pos += WriteVarint(s[pos..], streamId);
        pos += WriteVarint(s[pos..], offset);
        pos += WriteVarint(s[pos..], (ulong)data.Length);
        data.CopyTo(s[pos..]);
        return pos + data.Length;
    }

    public static int WriteDatagramFrame(Span<byte> s, ulong streamId, ulong index, ReadOnlySpan<byte> data)
    {
        int pos = 0;
        s[pos++] = FrameType.Datagram;
        pos += WriteVarint(s[pos..], streamId);
        pos += WriteVarint(s[pos..], index);
        s[pos++] = 1;
        pos += WriteVarint(s[pos..], (ulong)data.Length);
        data.CopyTo(s[pos..]);
        return pos + data.Length;
    }

    public static int WriteMaxStreamData(Span<byte> s, ulong streamId, ulong max)
    {
        s[0] = FrameType.MaxStreamData;
        int pos = 1 + WriteVarint(s[1..], streamId);
        return pos + WriteVarint(s[pos..], max);
    }

    public static int WriteResetStream(Span<byte> s, ulong streamId, ulong code, ulong finalSize)
    {
        s[0] = FrameType.ResetStream;
        int pos = 1 + WriteVarint(s[1..], streamId);
        pos += WriteVarint(s[pos..], code);
        return pos + WriteVarint(s[pos..], finalSize);
    }

    public static int WriteClose(Span<byte> s, ulong code, ReadOnlySpan<byte> reason)
    {
        s[0] = FrameType.Close;
        int pos = 1 + WriteVarint(s[1..], code);
        pos += WriteVarint(s[pos..], (ulong)reason.Length);
        reason.CopyTo(s[pos..]);
        return pos + reason.Length;
    }

    // ---- handshake messages (§4.1) ----

    /// <summary>Handshake header (§4.1): stream identifier 8 | type 1 | version 1 | reserved 3 (zeros); protected as every header (§3.3).</summary>
    public const int HandshakeHeaderSize = HeaderProtection.HeaderSize;
    /// <summary>Initiator handshake packets are padded to a length drawn uniformly from [1200, 1350] (§4.1).</summary>
    public const int HandshakeSize = 1200;
    public const int MaxHandshakeSize = MaxPacketSize;
    /// <summary>Responder handshake packets carry 0–255 bytes of padding, drawn uniformly (§4.1).</summary>
    public const int MaxResponderPadding = 255;
    /// <summary>The tail: an Elligator 2 representative (messages with an ephemeral key) or 16 random bytes (§4.1).</summary>
    public const int RepresentativeTail = Elligator2.Size, RandomTail = HeaderProtection.SampleSize;

    /// <summary>The tail size of a handshake packet of <paramref name="type"/> from the initiator (<paramref name="fromInitiator"/>) or the responder.</summary>
    public static int TailSize(byte type, bool fromInitiator) =>
        fromInitiator ? (type == PacketType.Hello ? RandomTail : RepresentativeTail) : (type == PacketType.ResponderComplete ? RepresentativeTail : RandomTail);

    /// <summary>A random length for an initiator handshake packet: uniform in [1200, 1350].</summary>
    public static int InitiatorHandshakeLength() => HandshakeSize + System.Security.Cryptography.RandomNumberGenerator.GetInt32(MaxHandshakeSize - HandshakeSize + 1);

    /// <summary>Random padding for a responder handshake packet: uniform in [0, 255].</summary>
    public static int ResponderPadding() => System.Security.Cryptography.RandomNumberGenerator.GetInt32(MaxResponderPadding + 1);

    public static void WriteHandshakeHeader(Span<byte> s, ulong streamIdentifier, byte type)
    {
        WriteId(s, streamIdentifier);
        s[IdSize] = type;
        s[IdSize + 1] = Version;
        s.Slice(IdSize + 2, 3).Clear();
    }

    /// <summary>Reads an unprotected handshake header: false unless the version is ours and the reserved bytes are zero.</summary>
    public static bool TryReadHandshakeHeader(ReadOnlySpan<byte> s, out ulong streamIdentifier, out byte type)
    {
        streamIdentifier = 0;
        type = 0;
        if (s.Length < HandshakeHeaderSize + RandomTail || s[IdSize + 1] != Version || s[(IdSize + 2)] != 0 || s[IdSize + 3] != 0 || s[IdSize + 4] != 0) return false;
        streamIdentifier = ReadId(s);
        type = s[IdSize];
        return true;
    }

    /// <summary>Hello: header (0, 0x02) | initiator id | zero padding | 16 random bytes; <paramref name="s"/> is the whole packet.</summary>
    public static int WriteHello(Span<byte> s, ulong initiatorId)
    {
        s.Clear();
        WriteHandshakeHeader(s, 0, PacketType.Hello);
        WriteId(s[HandshakeHeaderSize..], initiatorId);
        System.Security.Cryptography.RandomNumberGenerator.Fill(s[^RandomTail..]);
        return s.Length;
    }

    public static bool TryParseHello(ReadOnlySpan<byte> s, out ulong initiatorId)
    {
        initiatorId = 0;
        if (s.Length < HandshakeSize || !TryReadHandshakeHeader(s, out ulong id, out byte type) || id != 0 || type != PacketType.Hello) return false;
        initiatorId = ReadId(s[HandshakeHeaderSize..]);
        return initiatorId != 0;
    }

    /// <summary>Offset of the mezzanine in an Exchange (no token) or initiator Complete (with a token).</summary>
    public static int MezzanineOffset(int tokenLength, bool complete) => HandshakeHeaderSize + IdSize + (complete ? 1 + tokenLength : 0);

    /// <summary>Mezzanine plaintext (§4.1): timestamp 8 | flags 1 | initiator static public key 32 (zeros without flag 0x01).</summary>
    public const int MezzaninePlainSize = 8 + 1 + X25519.KeySize;
    public const int MezzanineSize = MezzaninePlainSize + RudKeys.TagSize;
    /// <summary>Mezzanine flag: the initiator proves a static key (§5.5).</summary>
    public const byte MezzanineInitiatorKey = 0x01;
    /// <summary>The initiator's proof after the mezzanine (§5.5): a GCM tag, or random bytes without a static key.</summary>
    public const int InitiatorProofSize = RudKeys.TagSize;
    /// <summary>The mezzanine's associated data: the handshake header, the initiator id and the representative (§4.1).</summary>
    public const int MezzanineAadSize = HandshakeHeaderSize + IdSize + RepresentativeTail;

    /// <summary>The mezzanine's associated data of the Exchange or Complete <paramref name="s"/> (the whole unprotected packet).</summary>
    public static void MezzanineAad(ReadOnlySpan<byte> s, Span<byte> aad)
    {
        s[..(HandshakeHeaderSize + IdSize)].CopyTo(aad);
        s[^RepresentativeTail..].CopyTo(aad[(HandshakeHeaderSize + IdSize)..]);
    }

    /// <summary>
    /// Writes the plaintext part of an Exchange (<paramref name="token"/> empty) or an initiator Complete
    /// into the whole packet <paramref name="s"/> (its length is the packet's): header, initiator id, token,
    /// zero padding, the representative last; the caller seals the mezzanine at the returned offset.
    /// </summary>
    public static int WriteExchangePlaintext(Span<byte> s, bool complete, ulong initiatorId, ReadOnlySpan<byte> representative, ReadOnlySpan<byte> token)
    {
        s.Clear();
        WriteHandshakeHeader(s, 0, complete ? PacketType.InitiatorComplete : PacketType.Exchange);
        WriteId(s[HandshakeHeaderSize..], initiatorId);
        int pos = HandshakeHeaderSize + IdSize;
        if (complete)
        {
            s[pos++] = (byte)token.Length;
            token.CopyTo(s[pos..]);
            pos += token.Length;
        }
        representative.CopyTo(s[^RepresentativeTail..]);
        return pos;
    }

    /// <summary>Parses an unprotected Exchange or initiator Complete; the offsets index <paramref name="s"/>; the representative is its last 32 bytes.</summary>
    public static bool TryParseExchange(ReadOnlySpan<byte> s, out bool complete, out ulong initiatorId, out int tokenOffset, out int tokenLength, out int mezzanineOffset)
    {
        complete = false;
        initiatorId = 0;
        tokenOffset = tokenLength = mezzanineOffset = 0;
        if (s.Length < HandshakeSize || !TryReadHandshakeHeader(s, out ulong id, out byte type) || id != 0) return false;
        if (type == PacketType.InitiatorComplete) complete = true;
        else if (type != PacketType.Exchange) return false;
        initiatorId = ReadId(s[HandshakeHeaderSize..]);
        int pos = HandshakeHeaderSize + IdSize;
        if (complete)
        {
            tokenLength = s[pos++];
            if (tokenLength == 0) return false;
            tokenOffset = pos;
            pos += tokenLength;
        }
        mezzanineOffset = pos;
        return initiatorId != 0 && pos + MezzanineSize + InitiatorProofSize <= s.Length - RepresentativeTail;
    }

    /// <summary>The length of a Challenge or Defer with <paramref name="padding"/> bytes of padding.</summary>
    public static int ChallengeOrDeferLength(bool challenge, int tokenLength, int padding) =>
        HandshakeHeaderSize + (challenge ? X25519.KeySize : 0) + 1 + tokenLength + padding + RandomTail;

    /// <summary>Challenge (static key and token) or Defer (token only) into the whole packet <paramref name="s"/> (<see cref="ChallengeOrDeferLength"/>).</summary>
    public static int WriteChallengeOrDefer(Span<byte> s, ulong initiatorId, ReadOnlySpan<byte> staticKey, ReadOnlySpan<byte> token)
    {
        bool challenge = !staticKey.IsEmpty;
        s.Clear();
        WriteHandshakeHeader(s, initiatorId, challenge ? PacketType.Challenge : PacketType.Defer);
        int pos = HandshakeHeaderSize;
        if (challenge)
        {
            staticKey.CopyTo(s[pos..]);
            pos += X25519.KeySize;
        }
        s[pos++] = (byte)token.Length;
        token.CopyTo(s[pos..]);
        System.Security.Cryptography.RandomNumberGenerator.Fill(s[^RandomTail..]);
        return s.Length;
    }

    /// <summary>Parses an unprotected Challenge (<paramref name="challenge"/> true: a static key precedes the token) or Defer.</summary>
    public static bool TryParseChallengeOrDefer(ReadOnlySpan<byte> s, bool challenge, out int staticKeyOffset, out int tokenOffset, out int tokenLength)
    {
        staticKeyOffset = tokenOffset = tokenLength = 0;
        if (!TryReadHandshakeHeader(s, out _, out _)) return false;
        int pos = HandshakeHeaderSize;
        if (challenge)
        {
            staticKeyOffset = pos;
            pos += X25519.KeySize;
        }
        if (s.Length < pos + 1 + RandomTail) return false;
        tokenLength = s[pos++];
        tokenOffset = pos;
        return tokenLength > 0 && s.Length - RandomTail >= pos + tokenLength;
    }

    public const int ResponderCompletePlainSize = IdSize + 1; // responder id | ticket length 0
    /// <summary>The responder Complete without padding: header | sealed (9 + 16) | representative 32.</summary>
    public const int ResponderCompleteSize = HandshakeHeaderSize + ResponderCompletePlainSize + RudKeys.TagSize + RepresentativeTail;
    /// <summary>The responder Complete's associated data: header | representative (§4.1).</summary>
    public const int ResponderCompleteAadSize = HandshakeHeaderSize + RepresentativeTail;
}

/// <summary>Stream kinds (spec/rud.md §8.2).</summary>
public enum StreamKind { Asynchronous = 0, Transactional = 1, Datagram = 2 }

/// <summary>A parsed header block (§3.1).</summary>
public struct HeaderBlock
{
    public bool HasAck;
    public ulong AckIndex;
    public ulong AckDelayMicroseconds;
    public int BitfieldOffset;
    public int BitfieldLength;
    public bool HasRetransmit;
    public ulong RetransmitIndex;
}

/// <summary>A parsed frame; data fields are offsets into the payload.</summary>
public struct Frame
{
    public byte Type;
    public ulong StreamId;
    public ulong Offset;   // STREAM offset, MAX_STREAM_DATA maximum, RESET final size, DATAGRAM index
    public ulong Code;
    public int DataOffset;
    public int DataLength;
}

/// <summary>
/// UDP sessions over RUD datagram streams (spec/rud.md §12.1): every datagram of a datagram stream
/// (§8.2) is exactly one frame of spec/turn.md §5.2, LENGTH included, with the OPEN and CLOSE types
/// of spec/asport.md §6.2 (<see cref="DatagramFrame"/>). One datagram stream carries one UDP association.
/// </summary>
internal static class RudUdpFrames
{
    /// <summary>The largest frame: one RUD datagram.</summary>
    public const int MaxFrame = RudDatagramStream.MaxDatagramSize;
    /// <summary>The largest payload of a UDP session (any peer family): 1200 − 22 = 1178.</summary>
    public const int MaxPayload = MaxFrame - DatagramFrame.MaxHeaderLength;

    /// <summary>Writes a frame into <paramref name="destination"/> (at least <see cref="MaxFrame"/> bytes); 0 when the payload is above <see cref="MaxPayload"/>.</summary>
    public static int TryWrite(Span<byte> destination, DatagramFrameType type, PeerAddress peer, ReadOnlySpan<byte> payload)
    {
        if (payload.Length > MaxPayload || destination.Length < DatagramFrame.HeaderLength(peer) + payload.Length) return 0;
        return DatagramFrame.Write(destination, type, peer, payload);
    }
}
