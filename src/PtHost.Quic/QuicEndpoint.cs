using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
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
    private readonly Dictionary<AddressKey, List<QuicConnection>> _byRemote = [];
    private readonly List<QuicConnection> _dirty = [];
    private readonly CancellationTokenSource _stop = new();
    private int _resetsThisSecond;
    private long _resetSecond;

    // Loop-owned native scratch.
    private readonly byte* _scratch;
    private const int ScratchSize = MaxPacketSize + Layout.PktInfo.Size + MaxVecs * Layout.Vec.Size + Layout.Path.Size + 128 + 128 + Layout.PktHd.Size + Layout.Cid.Size * 2 + Layout.TransportParams.Size + Layout.Settings.Size
        + Layout.Path.Size + 128 + 128 + 128;
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
    // ngtcp2_path_storage the write calls fill with the path each packet is for, and the destination
    // of the packets batched so far.
    private byte* WritePath => SettingsBuf + Layout.Settings.Size;
    private byte* WriteLocal => WritePath + Layout.Path.Size;
    private byte* WriteRemote => WriteLocal + 128;
    private byte* BatchRemote => WriteRemote + 128;
    private int _batchRemoteLen;
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
        *(nint*)(WritePath + Layout.Path.Local + Layout.Addr.AddrPtr) = (nint)WriteLocal;
        *(nint*)(WritePath + Layout.Path.Remote + Layout.Addr.AddrPtr) = (nint)WriteRemote;
        if (server is not null)
        {
            server.Validate();
            server.ValidateLimits();
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

    internal void LogCallbackFailure(Exception e) => _log.CallbackFailed(e);

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
}
