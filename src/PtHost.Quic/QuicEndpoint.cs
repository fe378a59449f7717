using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>
/// One UDP socket and one event loop that owns every ngtcp2 connection on it (ngtcp2 is not
/// thread-safe). A receive task feeds datagrams into the loop's event channel; applications
/// post work through the same channel; one timer wakes the loop at the earliest ngtcp2 expiry.
/// A server endpoint accepts connections; any endpoint can connect out.
/// </summary>
public sealed unsafe partial class QuicEndpoint : IAsyncDisposable
{
    internal const int MaxPacketSize = 1472;
    private const int MaxVecs = 64;
    private const string Priority =
        "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:" +
        "-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:+GROUP-SECP384R1:%DISABLE_TLS13_COMPAT_MODE";

    private enum EventKind : byte { Flush, Invoke }
    private readonly record struct LoopEvent(EventKind Kind, object Target);

    private readonly Socket _socket;
    private readonly ILogger _log;
    private readonly QuicServerOptions? _server;
    private nint _serverCredentials;
    private readonly byte[] _resetSecret;
    private readonly Channel<LoopEvent> _events = Channel.CreateUnbounded<LoopEvent>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Channel<QuicConnection>? _accepted;
    private readonly Dictionary<UInt128, QuicConnection> _byCid = [];
    private readonly Dictionary<string, QuicConnection> _byInitialDcid = [];
    private readonly List<QuicConnection> _connections = [];
    private readonly List<QuicConnection> _dirty = [];
    private readonly CancellationTokenSource _stop = new();
    private int _resetsThisSecond;
    private long _resetSecond;

    // Loop-owned native scratch.
    private readonly byte* _scratch;
    private const int ScratchSize = MaxPacketSize + Layout.PktInfo.Size + MaxVecs * Layout.Vec.Size + Layout.Path.Size + 128 + 128 + Layout.PktHd.Size + Layout.Cid.Size * 2 + Layout.TransportParams.Size + Layout.Settings.Size;
    private byte* SendBuf => _scratch;
    internal byte* PktInfo => _scratch + MaxPacketSize;
    private byte* Vecs => PktInfo + Layout.PktInfo.Size;
    private byte* ReadPath => Vecs + MaxVecs * Layout.Vec.Size;
    private byte* LocalSockaddr => ReadPath + Layout.Path.Size;
    private byte* RemoteSockaddr => LocalSockaddr + 128;
    private byte* PktHd => RemoteSockaddr + 128;
    private byte* CidA => PktHd + Layout.PktHd.Size;
    private byte* CidB => CidA + Layout.Cid.Size;
    private byte* Params => CidB + Layout.Cid.Size;
    private byte* SettingsBuf => Params + Layout.TransportParams.Size;
    private readonly int _localSockaddrLen;
    private readonly SocketAddress _localSocketAddress;

    private QuicEndpoint(IPEndPoint bind, QuicServerOptions? server, byte[]? resetSecret, ILogger? logger)
    {
        QuicLibrary.EnsureAvailable();
        _log = logger ?? NullLogger.Instance;
        _server = server;
        _resetSecret = resetSecret is { Length: >= 16 } ? (byte[])resetSecret.Clone() : RandomNumberGenerator.GetBytes(32);
        _socket = new Socket(bind.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            if (bind.AddressFamily == AddressFamily.InterNetworkV6) _socket.DualMode = false;
            _socket.ReceiveBufferSize = 4 << 20;
            _socket.SendBufferSize = 4 << 20;
            _socket.Bind(bind);
        }
        catch
        {
            _socket.Dispose();
            throw;
        }
        LocalEndPoint = (IPEndPoint)_socket.LocalEndPoint!;
        _scratch = (byte*)NativeMemory.AllocZeroed(ScratchSize);
        _localSocketAddress = LocalEndPoint.Serialize();
        _localSockaddrLen = _localSocketAddress.Size;
        _localSocketAddress.Buffer.Span[.._localSockaddrLen].CopyTo(new Span<byte>(LocalSockaddr, 128));
        if (server is not null)
        {
            server.Validate();
            if (server.Certificate is null) throw new ArgumentException("a QUIC server needs a certificate");
            _serverCredentials = LoadServerCredentials(server.Certificate);
            _accepted = Channel.CreateBounded<QuicConnection>(new BoundedChannelOptions(server.AcceptQueue) { FullMode = BoundedChannelFullMode.Wait });
        }
        StartIo();
    }

    /// <summary>An endpoint that only connects out.</summary>
    public static QuicEndpoint CreateClient(IPEndPoint? bind = null, ILogger? logger = null) =>
        new(bind ?? new IPEndPoint(IPAddress.Any, 0), null, null, logger);

    /// <summary>An endpoint that accepts connections (and may also connect out).</summary>
    public static QuicEndpoint CreateServer(IPEndPoint listen, QuicServerOptions options, ILogger? logger = null) =>
        new(listen, options, options.StatelessResetSecret, logger);

    public IPEndPoint LocalEndPoint { get; }

    /// <summary>Stateless resets sent (RFC 9000 §10.3) for packets to unknown connection ids.</summary>
    public long StatelessResetsSent;

    internal static ulong Now()
    {
        var t = Stopwatch.GetTimestamp();
        return Stopwatch.Frequency == 1_000_000_000 ? (ulong)t : (ulong)(t * (1_000_000_000.0 / Stopwatch.Frequency));
    }

    // ---- public API ----



    /// <summary>Test hook: forget every connection without a word, as a crashed process would.</summary>
    internal Task ForgetConnectionsAsync()
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            foreach (var c in _connections.ToArray())
            {
                c.Terminate(new QuicCloseInfo("forgotten", false, null), deleteNow: true);
                DeleteConnection(c);
            }
            tcs.TrySetResult();
        });
        return tcs.Task;
    }


    private void FreeNative()
    {
        if (_serverCredentials != 0) GnuTls.CertificateFreeCredentials(_serverCredentials);
        _serverCredentials = 0;
        NativeMemory.Free(_scratch);
        FreeIo();
    }

    // ---- posting work to the loop ----

    internal void Post(Action action)
    {
        if (!TryPost(action)) throw new ObjectDisposedException(nameof(QuicEndpoint));
    }

    internal bool TryPost(Action action)
    {
        if (!_events.Writer.TryWrite(new LoopEvent(EventKind.Invoke, action))) return false;
        Wake();
        return true;
    }

    internal void PostFlush(QuicConnection c)
    {
        if (!_events.Writer.TryWrite(new LoopEvent(EventKind.Flush, c))) Volatile.Write(ref c.FlushScheduled, 0);
        else Wake();
    }

    internal void LogCallbackFailure(Exception e) => _log.LogError(e, "QUIC callback failed");

    // ---- receive task ----


    // ---- the loop ----


    private void Handle(in LoopEvent ev)
    {
        switch (ev.Kind)
        {
            case EventKind.Flush:
                var c = (QuicConnection)ev.Target;
                Volatile.Write(ref c.FlushScheduled, 0);
                MarkDirty(c);
                break;
            case EventKind.Invoke:
                ((Action)ev.Target)();
                break;
        }
    }

    private void MarkDirty(QuicConnection c)
    {
        if (c.State < QuicConnection.ConnState.Closing && !_dirty.Contains(c)) _dirty.Add(c);
    }

    private void Service()
    {
        var now = Now();
        var deadline = ulong.MaxValue;
        for (var i = _connections.Count - 1; i >= 0; i--)
        {
            var c = _connections[i];
            if (c.State >= QuicConnection.ConnState.Closing)
            {
                if (now >= c.DeleteAt) DeleteConnection(c);
                else deadline = Math.Min(deadline, c.DeleteAt);
                continue;
            }
            var expiry = Ngtcp2.ConnGetExpiry(c.Conn);
            if (expiry <= now)
            {
                var rv = Ngtcp2.ConnHandleExpiry(c.Conn, now);
                if (rv != 0)
                {
                    OnFatal(c, rv);
                    continue;
                }
                MarkDirty(c);
            }
        }
        // Index loop: a flush that fails deletes its connection (Flush skips deleted ones).
        for (var i = 0; i < _dirty.Count; i++) Flush(_dirty[i]);
        _dirty.Clear();
        foreach (var c in _connections)
        {
            if (c.State >= QuicConnection.ConnState.Closing) deadline = Math.Min(deadline, c.DeleteAt);
            else deadline = Math.Min(deadline, Ngtcp2.ConnGetExpiry(c.Conn));
        }
        _nextDeadline = deadline;
    }

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
        foreach (var c in _connections)
            if (c.State < QuicConnection.ConnState.Closing &&
                from.SequenceEqual(c.RemoteSocketAddress.Buffer.Span[..c.RemoteSocketAddress.Size]))
                return c;
        return null;
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
        if (!from.SequenceEqual(conn.RemoteSocketAddress.Buffer.Span[..conn.RemoteSocketAddress.Size]))
        {
            var sa = new SocketAddress(LocalEndPoint.AddressFamily, from.Length);
            from.CopyTo(sa.Buffer.Span);
            conn.UpdateRemote(sa);
        }
        MarkDirty(conn);
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

    // ---- accepting ----

    private QuicConnection? TryAccept(byte* packet, int n, ReadOnlySpan<byte> from)
    {
        if (_server is null || _stop.IsCancellationRequested) return null;
        var rv = Ngtcp2.Accept(PktHd, packet, (nuint)n);
        if (rv != 0) return null; // not an acceptable Initial (version negotiation is not offered)
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
            Buffer.MemoryCopy(clientDcid, Params + Layout.TransportParams.OriginalDcid, Layout.Cid.Size, Layout.Cid.Size);
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
            return conn;
        }
        catch (Exception e)
        {
            _log.LogWarning("QUIC accept from {Remote} failed: {Error}", conn.RemoteEndPoint, e.Message);
            conn.Terminate(new QuicCloseInfo(e.Message, false, null), deleteNow: true);
            conn.Delete();
            return null;
        }
    }

    internal void OnAccepted(QuicConnection c)
    {
        if (_accepted is null || !_accepted.Writer.TryWrite(c))
        {
            _log.LogWarning("QUIC accept queue full; refusing {Remote}", c.RemoteEndPoint);
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
        *(ulong*)(SettingsBuf + Layout.Settings.HandshakeTimeout) = (ulong)o.HandshakeTimeout.Ticks * 100;
        *(ulong*)(SettingsBuf + Layout.Settings.MaxWindow) = (ulong)o.ConnectionReceiveWindow;
        *(ulong*)(SettingsBuf + Layout.Settings.MaxStreamWindow) = (ulong)o.StreamReceiveWindow;
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

    // ---- connection ids and stateless reset ----

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
        _connections.Remove(c);
        c.Delete();
    }

    // ---- packets out ----

    internal void Send(QuicConnection c, ReadOnlySpan<byte> packet) => SendRaw(packet, c.RemoteSocketAddress);

    private void SendRaw(ReadOnlySpan<byte> packet, SocketAddress to)
    {
        fixed (byte* p = packet) SendPackets(p, packet.Length, packet.Length, to);
    }

    /// <summary>Write every packet the connection has ready: stream data, datagrams, ACKs, control frames.</summary>
    private void Flush(QuicConnection c)
    {
        if (c.State >= QuicConnection.ConnState.Closing) return;
        c.ProcessStreamWork();
        if (c.LocalStreamsExtended)
        {
            c.LocalStreamsExtended = false;
            var n = c.PendingOpens.Count;
            for (var i = 0; i < n && c.PendingOpens.TryDequeue(out var p); i++)
                if (!c.TryOpen(p.Bidi, p.Tcs)) c.PendingOpens.Enqueue(p);
        }
        if (c.State == QuicConnection.ConnState.Established) c.UpdateDatagramSize();
        var ts = Now();
        var conn = c.Conn;
        // Packets are written back to back into the batch; a run of equal-sized packets (the
        // last may be shorter) leaves in one GSO sendmsg.
        int batchLen = 0, segment = 0, segments = 0;
        for (var packets = 0; packets < 4096; packets++)
        {
            nint written;
            var buf = SendBatch + batchLen;
            if (c.State == QuicConnection.ConnState.Established && c.DatagramsOut.TryPeek(out var d))
            {
                int accepted = 0;
                fixed (byte* dp = d.Buffer)
                {
                    *(nint*)(Vecs + Layout.Vec.Base) = (nint)dp;
                    *(nuint*)(Vecs + Layout.Vec.Len) = (nuint)d.Length;
                    written = Ngtcp2.ConnWritevDatagram(conn, null, 1, PktInfo, buf, MaxPacketSize, &accepted, Ngtcp2.WriteDatagramFlagMore, 0, Vecs, 1, ts);
                }
                // Not accepted into a packet that went out full of other frames: retry in the
                // next packet, twice at most; unsendable (too large, peer has no datagrams): drop.
                if (accepted != 0 || written is Ngtcp2.ErrInvalidArgument or Ngtcp2.ErrInvalidState || (written > 0 && ++c.DatagramRetries > 2))
                {
                    c.DatagramsOut.TryDequeue(out _);
                    c.DatagramRetries = 0;
                    c.DatagramDequeued(d.Buffer);
                    if (accepted == 0) Interlocked.Increment(ref c.DatagramsDropped);
                }
                if (written == Ngtcp2.ErrWriteMore || written is Ngtcp2.ErrInvalidArgument or Ngtcp2.ErrInvalidState) continue;
            }
            else
            {
                QuicStream? s = null;
                while (c.SendQueue.TryPeek(out var head))
                {
                    if (!head.Closed && !head.Blocked && head.HasSendWork) { s = head; break; }
                    c.SendQueue.Dequeue();
                    head.InSendQueue = false;
                }
                nint datalen = -1;
                if (s is null)
                {
                    written = Ngtcp2.ConnWritevStream(conn, null, 1, PktInfo, buf, MaxPacketSize, &datalen, Ngtcp2.WriteStreamFlagMore, -1, null, 0, ts);
                }
                else
                {
                    var cnt = s.BuildVecs(Vecs, MaxVecs, out var total, out var fin);
                    var flags = Ngtcp2.WriteStreamFlagMore | (fin ? Ngtcp2.WriteStreamFlagFin : 0);
                    written = Ngtcp2.ConnWritevStream(conn, null, 1, PktInfo, buf, MaxPacketSize, &datalen, flags, s.Id, Vecs, (nuint)cnt, ts);
                    if (datalen >= 0) s.OnSent(datalen, fin, total);
                    switch (written)
                    {
                        case Ngtcp2.ErrStreamDataBlocked:
                            s.Blocked = true;
                            c.SendQueue.Dequeue();
                            s.InSendQueue = false;
                            continue;
                        case Ngtcp2.ErrStreamShutWr:
                        case Ngtcp2.ErrStreamNotFound:
                            c.SendQueue.Dequeue();
                            s.InSendQueue = false;
                            s.OnWriteAborted(new QuicStreamAbortedException("stream no longer writable"));
                            continue;
                    }
                    if (!s.HasSendWork || written > 0)
                    {
                        // Round robin: the stream goes to the back (or leaves when it has nothing left).
                        c.SendQueue.Dequeue();
                        s.InSendQueue = false;
                        if (s.HasSendWork)
                        {
                            s.InSendQueue = true;
                            c.SendQueue.Enqueue(s);
                        }
                    }
                }
                if (written == Ngtcp2.ErrWriteMore) continue;
            }
            if (written < 0)
            {
                SendPackets(SendBatch, batchLen, segment, c.RemoteSocketAddress);
                OnFatal(c, (int)written);
                return;
            }
            if (written == 0) break;
            var size = (int)written;
            if (segments > 0 && size > segment)
            {
                // Larger than the run's segment size (a path MTU probe): the run leaves first.
                SendPackets(SendBatch, batchLen, segment, c.RemoteSocketAddress);
                Buffer.MemoryCopy(buf, SendBatch, SendBatchCapacity, size);
                batchLen = segments = 0;
            }
            if (segments == 0) segment = size;
            batchLen += size;
            segments++;
            if (size < segment || segments == MaxGsoSegments || batchLen + MaxPacketSize > MaxGsoBytes)
            {
                SendPackets(SendBatch, batchLen, segment, c.RemoteSocketAddress);
                batchLen = segments = 0;
            }
        }
        SendPackets(SendBatch, batchLen, segment, c.RemoteSocketAddress);
        Ngtcp2.ConnUpdatePktTxTime(conn, ts);
    }

    private static void CcerrLiberr(byte* ccerr, int liberr) => Ngtcp2Ext.SetTransportErrorLiberr(ccerr, liberr, null, 0);
    private static void CcerrTlsAlert(byte* ccerr, byte alert) => Ngtcp2Ext.SetTransportErrorTlsAlert(ccerr, alert, null, 0);
}

internal static unsafe partial class Ngtcp2Ext
{
    [LibraryImport(Ngtcp2.Lib, EntryPoint = "ngtcp2_connection_close_error_set_transport_error_liberr")]
    public static partial void SetTransportErrorLiberr(byte* ccerr, int liberr, byte* reason, nuint reasonLen);
    [LibraryImport(Ngtcp2.Lib, EntryPoint = "ngtcp2_connection_close_error_set_transport_error_tls_alert")]
    public static partial void SetTransportErrorTlsAlert(byte* ccerr, byte alert, byte* reason, nuint reasonLen);
}
