using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>
/// Path validation (spec/rud.md §7.1, after RFC 9000 §8.2 and §9): an authenticated packet with a new
/// largest sent index from an address other than the peer's does not move the connection; the address
/// gets a PATH_CHALLENGE, at most 3 times the bytes received from it, and the connection moves when a
/// PATH_RESPONSE with the challenge's data comes back (from any address: knowing the data proves that
/// the challenge arrived at the new address).
/// </summary>
public sealed partial class RudConnection
{
    /// <summary>Challenges sent to one address before it is given up (§7.1).</summary>
    private const int PathChallenges = 3;
    /// <summary>Least time between challenges to the same address, µs.</summary>
    private const long PathRetryMinUs = 200_000;

    private SocketAddress? _probeAddress;
    private ulong _probeData;
    private long _probeReceived, _probeSent, _probeNext;
    private int _probeTries;

    /// <summary>The address being validated (tests and diagnostics).</summary>
    internal IPEndPoint? ValidatingEndPoint { get { lock (Gate) return _probeAddress is null ? null : RudEndpoint.ToEndPoint(_probeAddress); } }

    /// <summary>An authenticated packet of <paramref name="length"/> bytes from <paramref name="from"/>, which is not the peer's address.</summary>
    private void OnPacketFromOtherAddress(SocketAddress from, int length, bool newLargest, long now)
    {
        if (_probeAddress is not null && from.Equals(_probeAddress))
        {
            _probeReceived += length;
            if (_probeTries < PathChallenges && now >= _probeNext) SendPathChallenge(now);
            return;
        }
        if (!newLargest) return; // a late packet from an address the peer left
        _probeAddress = RudEndpoint.Copy(from);
        Span<byte> data = stackalloc byte[8];
        RandomNumberGenerator.Fill(data);
        _probeData = BinaryPrimitives.ReadUInt64BigEndian(data);
        _probeReceived = length;
        _probeSent = 0;
        _probeTries = 0;
        _probeNext = now;
        SendPathChallenge(now);
    }

    /// <summary>Sends a PATH_CHALLENGE to the address being validated when the 3× limit allows it.</summary>
    private void SendPathChallenge(long now)
    {
        Span<byte> frame = stackalloc byte[9];
        frame[0] = FrameType.PathChallenge;
        BinaryPrimitives.WriteUInt64BigEndian(frame[1..], _probeData);
        int size = RudWire.DataHeaderSize + 1 + frame.Length + RudKeys.TagSize;
        if (_probeSent + size > 3 * _probeReceived)
        {
            // Anti-amplification (§7.1): nothing more to this address until more arrives from it.
            _counters.Increment(ref _counters.PathChallengesLimited);
            return;
        }
        var packet = _ep.SendPacketBuffer.AsSpan();
        int n = SealFrames(frame, packet, now);
        _ep.SendTo(packet[..n], _probeAddress!);
        _probeSent += n;
        _probeTries++;
        _probeNext = now + Math.Max(PathRetryMinUs, 2 * PtoDuration);
        _counters.Increment(ref _counters.PathChallengesSent);
    }

    /// <summary>The challenge timer: sends again, or gives the address up after <see cref="PathChallenges"/> tries.</summary>
    private void OnPathTimer(long now)
    {
        if (_probeAddress is null || now < _probeNext) return;
        if (_probeTries >= PathChallenges)
        {
            _probeAddress = null;
            _counters.Increment(ref _counters.PathValidationsFailed);
            return;
        }
        SendPathChallenge(now);
        if (_probeNext <= now) _probeNext = now + Math.Max(PathRetryMinUs, 2 * PtoDuration); // limited: look again later
    }

    private long PathWake => _probeAddress is null ? long.MaxValue : _probeNext;

    /// <summary>A PATH_CHALLENGE from the peer: answered at once, to the address it came from.</summary>
    private void OnPathChallenge(ReadOnlySpan<byte> data, SocketAddress from, long now)
    {
        Span<byte> frame = stackalloc byte[9];
        frame[0] = FrameType.PathResponse;
        data.CopyTo(frame[1..]);
        var packet = _ep.SendPacketBuffer.AsSpan();
        int n = SealFrames(frame, packet, now);
        _ep.SendTo(packet[..n], from);
    }

    /// <summary>A PATH_RESPONSE: when it carries the pending challenge's data, the connection moves to the validated address.</summary>
    private void OnPathResponse(ReadOnlySpan<byte> data, long now)
    {
        if (_probeAddress is null || BinaryPrimitives.ReadUInt64BigEndian(data) != _probeData) return;
        var to = _probeAddress;
        _probeAddress = null;
        MoveTo(to, now);
    }

    /// <summary>Network agility (§7.1): the connection follows the peer to a validated address.</summary>
    private void MoveTo(SocketAddress to, long now)
    {
        Peer = to;
        _counters.Increment(ref _counters.Migrations);
        // A new path may not carry what the old one did (§9.5).
        _maxPacket = RudWire.MaxPacketSize;
        _mtuProbing = false;
        _mtuProbeAttempts = 0;
        _mtuDone = !_ep.ProbesPathMtu;
        _mtuNextProbe = now;
        // What went to the old address is gone: probe at once instead of after a backed-off PTO.
        _ptoCount = 0;
        if (_bytesInFlight > 0) _lastAckElicitingSent = now - PtoDuration;
        _ep.RequestFlush(this);
    }

    /// <summary>
    /// A Data packet whose payload is a header block without ACK followed by exactly <paramref name="frames"/>,
    /// sealed with the next sent index into <paramref name="packet"/>; returns its length. It is not kept
    /// for loss recovery (the record is marked done): path frames are repeated by their own timers, and
    /// the attack tests forge packets with it. Caller holds <see cref="Gate"/>.
    /// </summary>
    private int SealFrames(ReadOnlySpan<byte> frames, Span<byte> packet, long now)
    {
        var plain = _ep.SendPlain.AsSpan(0, 1 + frames.Length);
        plain[0] = 0;
        frames.CopyTo(plain[1..]);
        int h = RudWire.WriteDataHeader(packet, RemoteId, _send!.Phase, _nextSent);
        _send.Seal(_nextSent, packet[..h], plain, packet[h..]);
        Hp.Mask(packet[..(h + plain.Length + RudKeys.TagSize)]);
        _sent.Add(new SentPacket { Number = _nextSent, SentTime = now, Size = h + plain.Length + RudKeys.TagSize, Done = true });
        _nextSent++;
        return h + plain.Length + RudKeys.TagSize;
    }
}
