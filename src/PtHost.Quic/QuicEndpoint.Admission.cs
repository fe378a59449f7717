using System.Buffers.Binary;
using System.Security.Cryptography;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>
/// Admission of new connections on a server endpoint (spec/asport.md §2.1): a cap on connections in
/// total and per source (an IPv4 address, an IPv6 prefix), and Retry (RFC 9000 §8.1.2) while many
/// handshakes are under way or many started this second, so that a flood of Initials from spoofed
/// addresses costs one small stateless packet each instead of a TLS handshake.
/// </summary>
public sealed unsafe partial class QuicEndpoint
{
    private readonly Dictionary<UInt128, int> _perSource = [];
    private readonly byte[] _tokenSecret = RandomNumberGenerator.GetBytes(32);
    private int _handshaking;
    private long _admitSecond;
    private int _admittedThisSecond;

    /// <summary>Initials dropped at the total or per-source connection cap.</summary>
    public long InitialsRefused;
    /// <summary>Retry packets sent, and Initials whose Retry token did not verify (dropped).</summary>
    public long RetriesSent, RetryTokensRejected;

    /// <summary>Connections the endpoint holds now (loop thread's count, read from anywhere).</summary>
    public int ConnectionCount => Volatile.Read(ref _connectionCount);
    private int _connectionCount;

    /// <summary>The source an address counts against: IPv4 address (as ::ffff:a.b.c.d), or IPv6 prefix.</summary>
    private UInt128 SourceOf(ReadOnlySpan<byte> sockaddr)
    {
        var family = BinaryPrimitives.ReadUInt16LittleEndian(sockaddr);
        if (family == 2 && sockaddr.Length >= 8)
            return ((UInt128)0xffff << 32) | BinaryPrimitives.ReadUInt32BigEndian(sockaddr[4..]);
        if (sockaddr.Length < 24) return 0;
        var a = BinaryPrimitives.ReadUInt128BigEndian(sockaddr.Slice(8, 16));
        var bits = _server!.SourcePrefixV6;
        return bits >= 128 ? a : a & ~(UInt128.MaxValue >> bits);
    }

    /// <summary>For an acceptable Initial (PktHd filled): whether a connection may start. Drops it at a cap,
    /// answers it with a Retry under load, or verifies its Retry token (the original DCID goes to CidB).</summary>
    private bool Admit(ReadOnlySpan<byte> from, out UInt128 source, out bool retried)
    {
        var o = _server!;
        retried = false;
        source = SourceOf(from);
        if (_connections.Count >= o.MaxConnections || _perSource.GetValueOrDefault(source) >= o.MaxConnectionsPerSource)
        {
            Interlocked.Increment(ref InitialsRefused);
            return false;
        }
        var token = *(byte**)(PktHd + Layout.PktHd.Token + Layout.Vec.Base);
        var tokenLen = (int)*(nuint*)(PktHd + Layout.PktHd.Token + Layout.Vec.Len);
        var version = *(uint*)(PktHd + Layout.PktHd.Version);
        var dcid = PktHd + Layout.PktHd.Dcid;
        var now = Now();
        fixed (byte* addr = from)
        fixed (byte* secret = _tokenSecret)
        {
            if (tokenLen > 0 && token[0] == Ngtcp2Crypto.RetryTokenMagic)
            {
                var rv = Ngtcp2Crypto.VerifyRetryToken(CidB, token, (nuint)tokenLen, secret, (nuint)_tokenSecret.Length, version,
                    addr, (uint)from.Length, dcid, (ulong)o.RetryTokenLifetime.Ticks * 100, now);
                if (rv != 0)
                {
                    Interlocked.Increment(ref RetryTokensRejected);
                    return false;
                }
                retried = true;
                return true;
            }
            if (!RetryNeeded(o)) return true;
            // Retry: a fresh source connection id, a token binding it to the address and the original DCID.
            RandomCid(CidA, QuicConnection.CidLength);
            var t = stackalloc byte[Ngtcp2Crypto.MaxRetryTokenLen];
            var n = Ngtcp2Crypto.GenerateRetryToken(t, secret, (nuint)_tokenSecret.Length, version, addr, (uint)from.Length, CidA, dcid, now);
            if (n <= 0) return false;
            var w = Ngtcp2Crypto.WriteRetry(SendBuf, MaxPacketSize, version, PktHd + Layout.PktHd.Scid, CidA, dcid, t, (nuint)n);
            if (w <= 0) return false;
            Interlocked.Increment(ref RetriesSent);
            SendPackets(SendBuf, (int)w, (int)w, addr, from.Length);
            return false;
        }
    }

    private bool RetryNeeded(QuicServerOptions o)
    {
        switch (o.Retry)
        {
            case QuicRetryPolicy.Always: return true;
            case QuicRetryPolicy.Never: return false;
        }
        var second = Environment.TickCount64 / 1000;
        if (second != _admitSecond)
        {
            _admitSecond = second;
            _admittedThisSecond = 0;
        }
        return _handshaking >= o.RetryHandshakingThreshold || _admittedThisSecond >= o.RetryRateThreshold;
    }

    /// <summary>A server connection was created: count it against its source, the handshakes and this second.</summary>
    private void Admitted(QuicConnection c, UInt128 source)
    {
        c.Source = source;
        c.Admitted = true;
        c.CountedHandshaking = true;
        _perSource[source] = _perSource.GetValueOrDefault(source) + 1;
        _handshaking++;
        var second = Environment.TickCount64 / 1000;
        if (second != _admitSecond)
        {
            _admitSecond = second;
            _admittedThisSecond = 0;
        }
        _admittedThisSecond++;
        Volatile.Write(ref _connectionCount, _connections.Count);
    }

    /// <summary>Loop thread: the handshake of <paramref name="c"/> completed or the connection is going.</summary>
    internal void HandshakeOver(QuicConnection c)
    {
        if (!c.CountedHandshaking) return;
        c.CountedHandshaking = false;
        _handshaking--;
    }

    private void Released(QuicConnection c)
    {
        HandshakeOver(c);
        if (c.Admitted)
        {
            c.Admitted = false;
            if (_perSource.TryGetValue(c.Source, out var k))
            {
                if (k <= 1) _perSource.Remove(c.Source);
                else _perSource[c.Source] = k - 1;
            }
        }
        Volatile.Write(ref _connectionCount, _connections.Count);
    }
}
