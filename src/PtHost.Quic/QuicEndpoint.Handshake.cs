using System.Buffers;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Accepting (server) and connecting (client): ngtcp2 connections with their gnutls sessions, ALPN and the peer check.</summary>
public sealed unsafe partial class QuicEndpoint
{
    // ---- accepting ----

    private QuicConnection? TryAccept(byte* packet, int n, ReadOnlySpan<byte> from)
    {
        if (_server is null || _stop.IsCancellationRequested) return null;
        var rv = Ngtcp2.Accept(PktHd, packet, (nuint)n);
        if (rv != 0) return null; // not an acceptable Initial (version negotiation is not offered)
        if (!Admit(from, out var source, out var retried)) return null;
        var remote = new SocketAddress(LocalEndPoint.AddressFamily, from.Length);
        from.CopyTo(remote.Buffer.Span);
        var conn = new QuicConnection(this, _server, isServer: true, remote);
        try
        {
            var clientDcid = PktHd + Layout.PktHd.Dcid;
            var clientScid = PktHd + Layout.PktHd.Scid;
            var version = *(uint*)(PktHd + Layout.PktHd.Version);
            NewCid(CidA, out var scidKey);
            PrepareSettingsAndParams(_server, server: true);
            if (retried)
            {
                // RFC 9000 §7.3: original_destination_connection_id is the one the token carried (CidB),
                // retry_source_connection_id the one our Retry chose (now the client's DCID); the token
                // tells ngtcp2 the address is validated (no 3× limit).
                Buffer.MemoryCopy(CidB, Params + Layout.TransportParams.OriginalDcid, Layout.Cid.Size, Layout.Cid.Size);
                Buffer.MemoryCopy(clientDcid, Params + Layout.TransportParams.RetryScid, Layout.Cid.Size, Layout.Cid.Size);
                *(Params + Layout.TransportParams.RetryScidPresent) = 1;
                *(nint*)(SettingsBuf + Layout.Settings.Token + Layout.Vec.Base) = *(nint*)(PktHd + Layout.PktHd.Token + Layout.Vec.Base);
                *(nuint*)(SettingsBuf + Layout.Settings.Token + Layout.Vec.Len) = *(nuint*)(PktHd + Layout.PktHd.Token + Layout.Vec.Len);
            }
            else Buffer.MemoryCopy(clientDcid, Params + Layout.TransportParams.OriginalDcid, Layout.Cid.Size, Layout.Cid.Size);
            *(byte*)(Params + Layout.TransportParams.StatelessResetTokenPresent) = 1;
            fixed (byte* secret = _resetSecret)
                Ngtcp2Crypto.GenerateStatelessResetToken(Params + Layout.TransportParams.StatelessResetToken, secret, (nuint)_resetSecret.Length, CidA);
            FillConnPath(conn, from);
            nint c;
            rv = Ngtcp2.ConnServerNew(&c, clientScid, CidA, conn.PathPtr, version, 1, Callbacks.Server, 1, SettingsBuf, 1, Params, 0, GCHandle.ToIntPtr(conn.Self));
            if (rv != 0) throw new QuicConnectionException("ngtcp2_conn_server_new: " + Ngtcp2.ErrorText(rv));
            conn.Conn = c;
            SetUpTls(conn, server: true, null);
            Register(conn, scidKey);
            var dcidLen = (int)*(nuint*)(clientDcid + Layout.Cid.DataLen);
            conn.InitialDcidKey = Convert.ToHexString(new ReadOnlySpan<byte>(clientDcid + Layout.Cid.Data, dcidLen));
            _byInitialDcid[conn.InitialDcidKey] = conn;
            _connections.Add(conn);
            IndexRemote(conn);
            Admitted(conn, source);
            return conn;
        }
        catch (Exception e)
        {
            _log.AcceptFailed(conn.RemoteEndPoint, e.Message);
            conn.Terminate(new QuicCloseInfo(e.Message, false, null), deleteNow: true);
            conn.Delete();
            return null;
        }
    }

    internal void OnAccepted(QuicConnection c)
    {
        if (_accepted is null || !_accepted.Writer.TryWrite(c))
        {
            _log.AcceptQueueFull(c.RemoteEndPoint);
            c.CloseLocally(0x2, "server busy");
        }
    }

    // ---- connecting ----

    private QuicConnection CreateClientConnection(IPEndPoint remote, QuicClientOptions options)
    {
        var remoteSa = remote.Serialize();
        var conn = new QuicConnection(this, options, isServer: false, remoteSa);
        try
        {
            conn.PinnedSha256 = options.Verification!.PinnedSha256;
            NewCid(CidA, out var scidKey);
            RandomCid(CidB, 18);
            PrepareSettingsAndParams(options, server: false);
            FillConnPath(conn, remoteSa.Buffer.Span[..remoteSa.Size]);
            nint c;
            var rv = Ngtcp2.ConnClientNew(&c, CidB, CidA, conn.PathPtr, Ngtcp2.ProtoVerV1, 1, Callbacks.Client, 1, SettingsBuf, 1, Params, 0, GCHandle.ToIntPtr(conn.Self));
            if (rv != 0) throw new QuicConnectionException("ngtcp2_conn_client_new: " + Ngtcp2.ErrorText(rv));
            conn.Conn = c;
            SetUpTls(conn, server: false, options);
            Register(conn, scidKey);
            _connections.Add(conn);
            IndexRemote(conn);
            MarkDirty(conn);
            return conn;
        }
        catch (Exception e)
        {
            conn.Terminate(new QuicCloseInfo(e.Message, false, null), deleteNow: true);
            conn.Delete();
            throw;
        }
    }

    private void FillConnPath(QuicConnection conn, ReadOnlySpan<byte> remote)
    {
        new ReadOnlySpan<byte>(LocalSockaddr, _localSockaddrLen).CopyTo(new Span<byte>(conn.LocalAddr, 128));
        remote.CopyTo(new Span<byte>(conn.RemoteAddr, 128));
        var path = conn.PathPtr;
        *(nint*)(path + Layout.Path.Local + Layout.Addr.AddrPtr) = (nint)conn.LocalAddr;
        *(uint*)(path + Layout.Path.Local + Layout.Addr.AddrLen) = (uint)_localSockaddrLen;
        *(nint*)(path + Layout.Path.Remote + Layout.Addr.AddrPtr) = (nint)conn.RemoteAddr;
        *(uint*)(path + Layout.Path.Remote + Layout.Addr.AddrLen) = (uint)remote.Length;
    }

    private void PrepareSettingsAndParams(QuicConnectionOptions o, bool server)
    {
        Ngtcp2.SettingsDefault(Ngtcp2.StructVersion, SettingsBuf);
        *(ulong*)(SettingsBuf + Layout.Settings.InitialTs) = Now();
        *(int*)(SettingsBuf + Layout.Settings.CcAlgo) = (int)o.CongestionControl;
        *(ulong*)(SettingsBuf + Layout.Settings.HandshakeTimeout) = (ulong)o.HandshakeTimeout.Ticks * 100;
        *(ulong*)(SettingsBuf + Layout.Settings.MaxWindow) = (ulong)o.MaxConnectionReceiveWindow;
        *(ulong*)(SettingsBuf + Layout.Settings.MaxStreamWindow) = (ulong)o.MaxStreamReceiveWindow;
        Ngtcp2.TransportParamsDefault(Ngtcp2.StructVersion, Params);
        var p = Params;
        *(ulong*)(p + Layout.TransportParams.InitialMaxStreamDataBidiLocal) = (ulong)o.StreamReceiveWindow;
        *(ulong*)(p + Layout.TransportParams.InitialMaxStreamDataBidiRemote) = (ulong)o.StreamReceiveWindow;
        *(ulong*)(p + Layout.TransportParams.InitialMaxStreamDataUni) = (ulong)o.StreamReceiveWindow;
        *(ulong*)(p + Layout.TransportParams.InitialMaxData) = (ulong)o.ConnectionReceiveWindow;
        *(ulong*)(p + Layout.TransportParams.InitialMaxStreamsBidi) = (ulong)o.MaxIncomingBidirectionalStreams;
        *(ulong*)(p + Layout.TransportParams.InitialMaxStreamsUni) = (ulong)o.MaxIncomingUnidirectionalStreams;
        *(ulong*)(p + Layout.TransportParams.MaxIdleTimeout) = (ulong)o.IdleTimeout.Ticks * 100;
        *(ulong*)(p + Layout.TransportParams.MaxUdpPayloadSize) = MaxPacketSize;
        *(ulong*)(p + Layout.TransportParams.ActiveConnectionIdLimit) = 4;
        *(ulong*)(p + Layout.TransportParams.MaxDatagramFrameSize) = (ulong)o.MaxDatagramFrameSize;
    }

    private void SetUpTls(QuicConnection conn, bool server, QuicClientOptions? client)
    {
        var connRef = conn.ConnRef;
        *(nint*)(connRef + Layout.CryptoConnRef.GetConn) = (nint)(delegate* unmanaged<byte*, nint>)&Callbacks.GetConn;
        *(nint*)(connRef + Layout.CryptoConnRef.UserData) = GCHandle.ToIntPtr(conn.Self);
        nint s;
        Check(GnuTls.Init(&s, (server ? GnuTls.Server : GnuTls.Client) | GnuTls.EnableEarlyData | GnuTls.NoEndOfEarlyData), "gnutls_init");
        conn.Session = s;
        var prio = Encoding.ASCII.GetBytes(Priority + "\0");
        fixed (byte* pp = prio) Check(GnuTls.PrioritySetDirect(s, pp, null), "gnutls_priority_set_direct");
        var rv = server ? Ngtcp2Crypto.ConfigureServerSession(s) : Ngtcp2Crypto.ConfigureClientSession(s);
        if (rv != 0) throw new QuicConnectionException("ngtcp2_crypto_gnutls_configure_session failed");
        GnuTls.SessionSetPtr(s, (nint)connRef);
        if (server)
        {
            Check(GnuTls.CredentialsSet(s, GnuTls.CrdCertificate, _serverCredentials), "gnutls_credentials_set");
        }
        else
        {
            nint cred;
            Check(GnuTls.CertificateAllocateCredentials(&cred), "gnutls_certificate_allocate_credentials");
            conn.ClientCredentials = cred;
            var v = client!.Verification!;
            if (v.PinnedSha256 is not null)
                GnuTls.CertificateSetVerifyFunction(cred, (nint)(delegate* unmanaged<nint, int>)&Callbacks.VerifyCertificate);
            else
            {
                var loaded = GnuTls.CertificateSetX509SystemTrust(cred);
                if (loaded <= 0) throw new QuicConnectionException("no system trust store available (ca-certificates)");
                var host = Encoding.UTF8.GetBytes(v.TrustedServerName! + "\0");
                fixed (byte* h = host) GnuTls.SessionSetVerifyCert(s, h, 0);
            }
            Check(GnuTls.CredentialsSet(s, GnuTls.CrdCertificate, cred), "gnutls_credentials_set");
            var sni = client.ServerName ?? v.TrustedServerName;
            if (sni is not null && !IPAddress.TryParse(sni, out _))
            {
                var name = Encoding.UTF8.GetBytes(sni);
                fixed (byte* np = name) Check(GnuTls.ServerNameSet(s, GnuTls.NameDns, np, (nuint)name.Length), "gnutls_server_name_set");
            }
        }
        SetAlpn(s, conn.Options.ApplicationProtocols, server);
        Ngtcp2.ConnSetTlsNativeHandle(conn.Conn, s);
    }

    private static void SetAlpn(nint session, IReadOnlyList<string> protocols, bool server)
    {
        var bytes = protocols.Select(Encoding.ASCII.GetBytes).ToArray();
        var handles = bytes.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToArray();
        try
        {
            var datums = stackalloc byte[Layout.GnutlsDatum.Size * bytes.Length];
            for (var i = 0; i < bytes.Length; i++)
            {
                *(nint*)(datums + i * Layout.GnutlsDatum.Size + Layout.GnutlsDatum.Data) = handles[i].AddrOfPinnedObject();
                *(uint*)(datums + i * Layout.GnutlsDatum.Size + Layout.GnutlsDatum.DataSize) = (uint)bytes[i].Length;
            }
            Check(GnuTls.AlpnSetProtocols(session, datums, (uint)bytes.Length, server ? (uint)GnuTls.AlpnMandatory : 0), "gnutls_alpn_set_protocols");
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
    }

    private static nint LoadServerCredentials(QuicCertificate cert)
    {
        nint cred;
        Check(GnuTls.CertificateAllocateCredentials(&cred), "gnutls_certificate_allocate_credentials");
        var c = Encoding.ASCII.GetBytes(cert.CertificatePem);
        var k = Encoding.ASCII.GetBytes(cert.PrivateKeyPem);
        var cd = stackalloc byte[Layout.GnutlsDatum.Size];
        var kd = stackalloc byte[Layout.GnutlsDatum.Size];
        fixed (byte* cp = c)
        fixed (byte* kp = k)
        {
            *(nint*)(cd + Layout.GnutlsDatum.Data) = (nint)cp;
            *(uint*)(cd + Layout.GnutlsDatum.DataSize) = (uint)c.Length;
            *(nint*)(kd + Layout.GnutlsDatum.Data) = (nint)kp;
            *(uint*)(kd + Layout.GnutlsDatum.DataSize) = (uint)k.Length;
            var rv = GnuTls.CertificateSetX509KeyMem(cred, cd, kd, GnuTls.X509FmtPem);
            if (rv < 0)
            {
                GnuTls.CertificateFreeCredentials(cred);
                throw new ArgumentException("the QUIC server certificate or key is not usable: " + GnuTls.ErrorText(rv));
            }
        }
        return cred;
    }

    private static void Check(int rv, string what)
    {
        if (rv < 0) throw new QuicConnectionException(what + ": " + GnuTls.ErrorText(rv));
    }
}
