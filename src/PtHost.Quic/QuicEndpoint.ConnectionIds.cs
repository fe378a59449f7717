using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Connection ids and stateless resets (RFC 9000 §10.3): at most 100 resets a second, each shorter than the packet that caused it.</summary>
public sealed unsafe partial class QuicEndpoint
{
    // ---- connection ids and stateless reset ----

    /// <summary>A socket address (sockaddr_in or sockaddr_in6, at most 32 bytes) as a hash key.</summary>
    internal readonly record struct AddressKey(UInt128 Low, UInt128 High)
    {
        public static AddressKey Of(ReadOnlySpan<byte> sockaddr)
        {
            Span<byte> b = stackalloc byte[32];
            b.Clear();
            sockaddr[..Math.Min(sockaddr.Length, 32)].CopyTo(b);
            return new(BinaryPrimitives.ReadUInt128LittleEndian(b), BinaryPrimitives.ReadUInt128LittleEndian(b[16..]));
        }
    }

    private static UInt128 Key(ReadOnlySpan<byte> cid16) => BinaryPrimitives.ReadUInt128LittleEndian(cid16);

    private static void RandomCid(byte* cid, int len)
    {
        *(nuint*)(cid + Layout.Cid.DataLen) = (nuint)len;
        RandomNumberGenerator.Fill(new Span<byte>(cid + Layout.Cid.Data, len));
    }

    private void NewCid(byte* cid, out UInt128 key)
    {
        do
        {
            RandomCid(cid, QuicConnection.CidLength);
            key = Key(new ReadOnlySpan<byte>(cid + Layout.Cid.Data, QuicConnection.CidLength));
        } while (_byCid.ContainsKey(key));
    }

    private void Register(QuicConnection c, UInt128 key)
    {
        _byCid[key] = c;
        c.Cids.Add(key);
    }

    /// <summary>ngtcp2 wants another connection id for <paramref name="c"/> (get_new_connection_id).</summary>
    internal void IssueConnectionId(QuicConnection c, byte* cid, byte* token, int cidLen)
    {
        if (cidLen != QuicConnection.CidLength) throw new InvalidOperationException($"unexpected cid length {cidLen}");
        NewCid(cid, out var key);
        var secret = stackalloc byte[_resetSecret.Length];
        _resetSecret.AsSpan().CopyTo(new Span<byte>(secret, _resetSecret.Length));
        if (Ngtcp2Crypto.GenerateStatelessResetToken(token, secret, (nuint)_resetSecret.Length, cid) != 0)
            throw new InvalidOperationException("stateless reset token generation failed");
        Register(c, key);
    }

    internal void RetireConnectionId(QuicConnection c, byte* cid)
    {
        if ((int)*(nuint*)(cid + Layout.Cid.DataLen) != QuicConnection.CidLength) return;
        var key = Key(new ReadOnlySpan<byte>(cid + Layout.Cid.Data, QuicConnection.CidLength));
        if (_byCid.TryGetValue(key, out var owner) && owner == c)
        {
            _byCid.Remove(key);
            c.Cids.Remove(key);
        }
    }

    /// <summary>RFC 9000 §10.3: a short-header packet for a connection id we do not know gets a
    /// stateless reset, smaller than the packet that triggered it, at most 100 per second.</summary>
    private void SendStatelessReset(ReadOnlySpan<byte> dcid, int triggerLength, ReadOnlySpan<byte> from)
    {
        const int MaxResetLength = 43;
        var length = Math.Min(triggerLength - 1, MaxResetLength);
        var randLen = length - 1 - Layout.StatelessResetTokenLen;
        if (randLen < Layout.MinStatelessResetRandLen) return;
        var second = Environment.TickCount64 / 1000;
        if (second != _resetSecond)
        {
            _resetSecond = second;
            _resetsThisSecond = 0;
        }
        if (++_resetsThisSecond > 100) return;
        var cid = CidA;
        *(nuint*)(cid + Layout.Cid.DataLen) = (nuint)dcid.Length;
        dcid.CopyTo(new Span<byte>(cid + Layout.Cid.Data, Layout.MaxCidLen));
        var token = stackalloc byte[Layout.StatelessResetTokenLen];
        var secret = stackalloc byte[_resetSecret.Length];
        _resetSecret.AsSpan().CopyTo(new Span<byte>(secret, _resetSecret.Length));
        if (Ngtcp2Crypto.GenerateStatelessResetToken(token, secret, (nuint)_resetSecret.Length, cid) != 0) return;
        var rand = stackalloc byte[randLen];
        RandomNumberGenerator.Fill(new Span<byte>(rand, randLen));
        var n = Ngtcp2.PktWriteStatelessReset(SendBuf, (nuint)length, token, rand, (nuint)randLen);
        if (n <= 0) return;
        var to = new SocketAddress(LocalEndPoint.AddressFamily, from.Length);
        from.CopyTo(to.Buffer.Span);
        Interlocked.Increment(ref StatelessResetsSent);
        SendRaw(new ReadOnlySpan<byte>(SendBuf, (int)n), to);
    }

    private void DeleteConnection(QuicConnection c)
    {
        foreach (var key in c.Cids)
            if (_byCid.TryGetValue(key, out var owner) && owner == c) _byCid.Remove(key);
        c.Cids.Clear();
        if (c.InitialDcidKey is not null && _byInitialDcid.TryGetValue(c.InitialDcidKey, out var o) && o == c)
            _byInitialDcid.Remove(c.InitialDcidKey);
        UnindexRemote(c);
        _connections.Remove(c);
        Released(c);
        c.Delete();
    }
}
