using System.Net;
using System.Text;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Packets in: routing by connection id (a stateless reset reaches its connection by the peer address, spec/asport.md §2), new connections, and the close reasons a peer gives.</summary>
public sealed unsafe partial class QuicEndpoint
{
    // ---- packets in ----

    private void OnPacket(byte* packet, int n, ReadOnlySpan<byte> from)
    {
        if (n < 1) return;
        var span = new ReadOnlySpan<byte>(packet, n);
        var longHeader = (span[0] & 0x80) != 0;
        ReadOnlySpan<byte> dcid;
        if (longHeader)
        {
            if (n < 7) return;
            var len = span[5];
            if (len > Layout.MaxCidLen || 6 + len > n) return;
            dcid = span.Slice(6, len);
        }
        else
        {
            if (n < 1 + QuicConnection.CidLength) return;
            dcid = span.Slice(1, QuicConnection.CidLength);
        }
        QuicConnection? conn = null;
        if (dcid.Length == QuicConnection.CidLength) _byCid.TryGetValue(Key(dcid), out conn);
        if (conn is null && longHeader) _byInitialDcid.TryGetValue(Convert.ToHexString(dcid), out conn);
        // A stateless reset carries a random DCID: hand unknown short-header packets to a
        // connection with that peer address, whose ngtcp2 checks the reset token.
        if (conn is null && !longHeader) conn = FindByRemote(from);
        if (conn is null)
        {
            if (longHeader) conn = TryAccept(packet, n, from);
            else SendStatelessReset(dcid, n, from);
            if (conn is null) return;
        }
        if (conn.State >= QuicConnection.ConnState.Closing)
        {
            // Closing period: answer with the saved CONNECTION_CLOSE (RFC 9000 §10.2.1).
            if (conn.State == QuicConnection.ConnState.Closing && conn.ClosePacket is not null)
                Send(conn, conn.ClosePacket.AsSpan(0, conn.ClosePacketLength));
            return;
        }
        ReadPacket(conn, packet, n, from);
    }

    private QuicConnection? FindByRemote(ReadOnlySpan<byte> from)
    {
        if (!_byRemote.TryGetValue(AddressKey.Of(from), out var list)) return null;
        foreach (var c in list)
            if (c.State < QuicConnection.ConnState.Closing) return c;
        return null;
    }

    /// <summary>A connection reachable by its peer address (stateless resets, §2), indexed so that
    /// unknown short-header packets cost a hash lookup, not a scan (spec/asport.md §5.1).</summary>
    private void IndexRemote(QuicConnection c)
    {
        if (!_byRemote.TryGetValue(c.RemoteKey, out var list)) _byRemote[c.RemoteKey] = list = new List<QuicConnection>(1);
        list.Add(c);
    }

    private void UnindexRemote(QuicConnection c)
    {
        if (!_byRemote.TryGetValue(c.RemoteKey, out var list)) return;
        list.Remove(c);
        if (list.Count == 0) _byRemote.Remove(c.RemoteKey);
    }

    private void ReadPacket(QuicConnection conn, byte* packet, int n, ReadOnlySpan<byte> from)
    {
        FillPath(ReadPath, from);
        var rv = Ngtcp2.ConnReadPkt(conn.Conn, ReadPath, Ngtcp2.StructVersion, PktInfo, packet, (nuint)n, Now());
        if (rv != 0)
        {
            OnFatal(conn, rv);
            return;
        }
        // ngtcp2 returns 0 also for packets it dropped (undecryptable, from an unknown path on a client):
        // never move on the packet's source, follow the path ngtcp2 chose (RFC 9000 §9: it migrates
        // only on an authenticated non-probing packet, then validates the new path and limits what it
        // sends there to 3× what it received until then).
        FollowPath(conn);
        MarkDirty(conn);
    }

    private void FollowPath(QuicConnection conn)
    {
        var path = Ngtcp2.ConnGetPath(conn.Conn);
        if (path == null) return;
        var addr = *(byte**)(path + Layout.Path.Remote + Layout.Addr.AddrPtr);
        var len = (int)*(uint*)(path + Layout.Path.Remote + Layout.Addr.AddrLen);
        if (addr == null || len <= 0 || len > 128) return;
        var remote = new ReadOnlySpan<byte>(addr, len);
        if (remote.SequenceEqual(conn.RemoteSocketAddress.Buffer.Span[..conn.RemoteSocketAddress.Size])) return;
        UnindexRemote(conn);
        conn.UpdateRemote(remote);
        IndexRemote(conn);
    }

    private void FillPath(byte* path, ReadOnlySpan<byte> remote)
    {
        remote.CopyTo(new Span<byte>(RemoteSockaddr, 128));
        *(nint*)(path + Layout.Path.Local + Layout.Addr.AddrPtr) = (nint)LocalSockaddr;
        *(uint*)(path + Layout.Path.Local + Layout.Addr.AddrLen) = (uint)_localSockaddrLen;
        *(nint*)(path + Layout.Path.Remote + Layout.Addr.AddrPtr) = (nint)RemoteSockaddr;
        *(uint*)(path + Layout.Path.Remote + Layout.Addr.AddrLen) = (uint)remote.Length;
        *(nint*)(path + Layout.Path.UserData) = 0;
    }

    /// <summary>A read or expiry failed: classify and end the connection.</summary>
    private void OnFatal(QuicConnection c, int rv)
    {
        switch (rv)
        {
            case Ngtcp2.ErrDraining:
                c.Terminate(PeerCloseInfo(c), deleteNow: false);
                break;
            case Ngtcp2.ErrIdleClose:
                c.Terminate(new QuicCloseInfo("idle timeout", false, null), deleteNow: true);
                break;
            case Ngtcp2.ErrHandshakeTimeout:
                c.Terminate(new QuicCloseInfo("handshake timeout", false, null), deleteNow: true);
                break;
            case Ngtcp2.ErrDropConn:
            case Ngtcp2.ErrRetry:
                c.Terminate(new QuicCloseInfo("dropped: " + Ngtcp2.ErrorText(rv), false, null), deleteNow: true);
                break;
            case Ngtcp2.ErrClosing:
                c.Terminate(new QuicCloseInfo("closing", false, null), deleteNow: false);
                break;
            default:
                var reason = c.PeerVerifyFailure ?? (rv == -215
                    ? $"TLS handshake failed (alert {Ngtcp2.ConnGetTlsAlert(c.Conn)})"
                    : Ngtcp2.ErrorText(rv));
                if (rv == -215) CcerrTlsAlert(c.Ccerr, Ngtcp2.ConnGetTlsAlert(c.Conn));
                else CcerrLiberr(c.Ccerr, rv);
                c.WriteCloseAndTerminate(new QuicCloseInfo(reason, false, null));
                break;
        }
        if (c.DeleteAt == 0) DeleteConnection(c);
    }

    private static QuicCloseInfo PeerCloseInfo(QuicConnection c)
    {
        if (c.StatelessResetReceived) return new QuicCloseInfo("stateless reset by peer", true, null);
        var e = c.Ccerr;
        Ngtcp2.ConnGetConnectionCloseError(c.Conn, e);
        var type = *(int*)(e + Layout.ConnectionCloseError.Type);
        var code = *(ulong*)(e + Layout.ConnectionCloseError.ErrorCode);
        var rp = *(byte**)(e + Layout.ConnectionCloseError.Reason);
        var rl = (int)*(nuint*)(e + Layout.ConnectionCloseError.ReasonLen);
        var text = rp != null && rl > 0 ? Encoding.UTF8.GetString(rp, rl) : "";
        return type == Ngtcp2.CcerrTypeApplication
            ? new QuicCloseInfo($"closed by peer (application error {code}{(text.Length > 0 ? ": " + text : "")})", true, code)
            : new QuicCloseInfo($"closed by peer (transport error 0x{code:x}{(text.Length > 0 ? ": " + text : "")})", true, null);
    }

    private static void CcerrLiberr(byte* ccerr, int liberr) => Ngtcp2.ConnectionCloseErrorSetTransportErrorLiberr(ccerr, liberr, null, 0);
    private static void CcerrTlsAlert(byte* ccerr, byte alert) => Ngtcp2.ConnectionCloseErrorSetTransportErrorTlsAlert(ccerr, alert, null, 0);
}
