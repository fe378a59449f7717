using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Why a connection ended.</summary>
public sealed record QuicCloseInfo(string Reason, bool ByPeer, ulong? ApplicationErrorCode);

/// <summary>The connection failed during its handshake or was closed.</summary>
public sealed class QuicConnectionException(string message) : IOException(message);

/// <summary>
/// One QUIC connection. All ngtcp2 and gnutls calls happen on the owning endpoint's loop; the
/// public methods post work there and are safe from any thread.
/// </summary>
public sealed unsafe partial class QuicConnection : IAsyncDisposable
{
    internal const int CidLength = 16;

    internal readonly QuicEndpoint Endpoint;
    internal readonly QuicConnectionOptions Options;
    internal nint Conn;
    internal nint Session;
    internal nint ClientCredentials;
    internal GCHandle Self;
    // Native block: path | local sockaddr | remote sockaddr | conn_ref | ccerr.
    internal byte* Native;
    internal const int NativeSize = Layout.Path.Size + 128 + 128 + Layout.CryptoConnRef.Size + Layout.ConnectionCloseError.Size;
    internal byte* PathPtr => Native;
    internal byte* LocalAddr => Native + Layout.Path.Size;
    internal byte* RemoteAddr => Native + Layout.Path.Size + 128;
    internal byte* ConnRef => Native + Layout.Path.Size + 256;
    internal byte* Ccerr => Native + Layout.Path.Size + 256 + Layout.CryptoConnRef.Size;

    internal SocketAddress RemoteSocketAddress;
    /// <summary>The endpoint's index key of <see cref="RemoteSocketAddress"/>.</summary>
    internal QuicEndpoint.AddressKey RemoteKey;
    /// <summary>Server connections: the source the connection counts against, and what it is counted in (QuicEndpoint.Admission).</summary>
    internal UInt128 Source;
    internal bool Admitted, CountedHandshaking;
    internal readonly List<UInt128> Cids = [];
    internal string? InitialDcidKey;
    internal readonly Dictionary<long, QuicStream> Streams = [];
    internal readonly ConcurrentQueue<QuicStream> StreamWork = new();
    internal readonly Queue<QuicStream> SendQueue = new();
    internal int FlushScheduled;
    internal bool LocalStreamsExtended;
    internal readonly Queue<(bool Bidi, TaskCompletionSource<QuicStream> Tcs)> PendingOpens = new();

    private readonly Channel<QuicStream> _accepted = Channel.CreateUnbounded<QuicStream>(new UnboundedChannelOptions { SingleWriter = true });
    private readonly TaskCompletionSource _handshake = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<QuicCloseInfo> _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Datagrams (RFC 9221).
    internal readonly ConcurrentQueue<(byte[] Buffer, int Length)> DatagramsOut = new();
    private int _datagramsOutCount;
    private readonly Channel<(byte[] Buffer, int Length)> _datagramsIn;
    internal int DatagramRetries;

    internal byte[]? PinnedSha256;
    internal string? PeerVerifyFailure;
    internal bool StatelessResetReceived;

    internal enum ConnState { Handshaking, Established, Closing, Draining, Deleted }
    internal ConnState State;
    internal ulong DeleteAt;
    internal byte[]? ClosePacket;
    internal int ClosePacketLength;

    internal QuicConnection(QuicEndpoint endpoint, QuicConnectionOptions options, bool isServer, SocketAddress remote)
    {
        Endpoint = endpoint;
        Options = options;
        IsServer = isServer;
        RemoteSocketAddress = remote;
        RemoteKey = QuicEndpoint.AddressKey.Of(remote.Buffer.Span[..remote.Size]);
        RemoteEndPoint = (IPEndPoint)new IPEndPoint(IPAddress.Any, 0).Create(remote);
        // A client chose its server's address; a server's peer address is validated when the handshake completes.
        if (!isServer) ValidatedRemoteEndPoint = RemoteEndPoint;
        _datagramsIn = Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(options.DatagramReceiveQueue)
        {
            FullMode = BoundedChannelFullMode.DropWrite, SingleWriter = true,
        }, dropped => ArrayPool<byte>.Shared.Return(dropped.Item1));
        Self = GCHandle.Alloc(this);
        Native = (byte*)NativeMemory.AllocZeroed(NativeSize);
    }

    public bool IsServer { get; }
    /// <summary>The peer address packets go to now: the remote address of ngtcp2's current path, which
    /// moves only after an authenticated packet from another address (RFC 9000 §9), possibly before that
    /// address is validated.</summary>
    public IPEndPoint RemoteEndPoint { get; private set; }
    /// <summary>The latest peer address proven to reach the peer: the handshake's (a server's peer
    /// completes it only by receiving our Handshake packets there) or a path ngtcp2 validated since
    /// (RFC 9000 §8). Null on a server until the handshake completes. Use it for access decisions.</summary>
    public IPEndPoint? ValidatedRemoteEndPoint { get; private set; }
    public IPEndPoint LocalEndPoint => Endpoint.LocalEndPoint;
    /// <summary>The ALPN protocol both sides agreed on (after the handshake).</summary>
    public string? NegotiatedApplicationProtocol { get; internal set; }
    /// <summary>Largest datagram payload the peer accepts on the current path; 0 = no datagrams.</summary>
    public int MaxDatagramPayloadSize { get; internal set; }
    /// <summary>Completes when the connection is gone, with the reason.</summary>
    public Task<QuicCloseInfo> Closed => _closed.Task;
    internal Task HandshakeTask => _handshake.Task;
    public long DatagramsDropped;

    // ---- public API ----

    public ValueTask<QuicStream> OpenBidirectionalStreamAsync(CancellationToken cancellationToken = default) =>
        OpenStreamAsync(true, cancellationToken);

    public ValueTask<QuicStream> OpenUnidirectionalStreamAsync(CancellationToken cancellationToken = default) =>
        OpenStreamAsync(false, cancellationToken);


    /// <summary>Loop thread.</summary>
    internal bool TryOpen(bool bidi, TaskCompletionSource<QuicStream> tcs)
    {
        if (tcs.Task.IsCompleted) return true;
        long id;
        var rv = bidi ? Ngtcp2.ConnOpenBidiStream(Conn, &id, 0) : Ngtcp2.ConnOpenUniStream(Conn, &id, 0);
        if (rv == Ngtcp2.ErrStreamIdBlocked) return false;
        if (rv != 0)
        {
            tcs.TrySetException(new QuicConnectionException("cannot open stream: " + Ngtcp2.ErrorText(rv)));
            return true;
        }
        var stream = new QuicStream(this, id, Options.StreamSendBuffer);
        Streams[id] = stream;
        if (!tcs.TrySetResult(stream)) Ngtcp2.ConnShutdownStream(Conn, id, 0);
        return true;
    }


    /// <summary>Queues an RFC 9221 datagram; false when it is too large for the peer or the queue is full.</summary>
    public bool TrySendDatagram(ReadOnlySpan<byte> payload)
    {
        if (State >= ConnState.Closing || payload.Length > MaxDatagramPayloadSize) return false;
        if (Interlocked.Increment(ref _datagramsOutCount) > Options.DatagramSendQueue)
        {
            Interlocked.Decrement(ref _datagramsOutCount);
            Interlocked.Increment(ref DatagramsDropped);
            return false;
        }
        var buf = ArrayPool<byte>.Shared.Rent(payload.Length);
        payload.CopyTo(buf);
        DatagramsOut.Enqueue((buf, payload.Length));
        ScheduleFlush();
        return true;
    }

    internal void DatagramDequeued(byte[] buffer)
    {
        Interlocked.Decrement(ref _datagramsOutCount);
        ArrayPool<byte>.Shared.Return(buffer);
    }


    /// <summary>Loop thread: recv_datagram.</summary>
    internal void OnDatagram(ReadOnlySpan<byte> data)
    {
        var buf = ArrayPool<byte>.Shared.Rent(Math.Max(1, data.Length));
        data.CopyTo(buf);
        if (!_datagramsIn.Writer.TryWrite((buf, data.Length))) Interlocked.Increment(ref DatagramsDropped);
    }

    /// <summary>TLS keying material exporter (RFC 5705 / RFC 8446 §7.5) on this connection's session.</summary>
    public Task<byte[]> ExportKeyingMaterialAsync(ReadOnlyMemory<byte> label, ReadOnlyMemory<byte> context, int length)
    {
        var tcs = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        Endpoint.Post(() =>
        {
            if (Session == 0 || State == ConnState.Handshaking)
            {
                tcs.TrySetException(new InvalidOperationException("the exporter needs a completed handshake"));
                return;
            }
            var output = new byte[length];
            int rv;
            fixed (byte* l = label.Span)
            fixed (byte* c = context.Span)
            fixed (byte* o = output)
                rv = GnuTls.PrfRfc5705(Session, (nuint)label.Length, l, (nuint)context.Length, c, (nuint)length, o);
            if (rv < 0) tcs.TrySetException(new QuicConnectionException("TLS exporter failed: " + GnuTls.ErrorText(rv)));
            else tcs.TrySetResult(output);
        });
        return tcs.Task;
    }

    /// <summary>Graceful close: CONNECTION_CLOSE with an application error code.</summary>
    public Task CloseAsync(ulong applicationErrorCode = 0, string reason = "")
    {
        // After the endpoint is gone the connection is already closed (its loop terminated it).
        Endpoint.TryPost(() => CloseLocally(applicationErrorCode, reason));
        return Closed;
    }


    // ---- loop-thread internals ----

    internal void ScheduleFlush()
    {
        if (Interlocked.Exchange(ref FlushScheduled, 1) == 0) Endpoint.PostFlush(this);
    }

    internal void ScheduleStreamWork(QuicStream stream)
    {
        if (Interlocked.Exchange(ref stream.Flags.WorkScheduled, 1) == 0) StreamWork.Enqueue(stream);
        ScheduleFlush();
    }

    internal void AbortStream(QuicStream stream, ulong code) => Endpoint.TryPost(() =>
    {
        if (State < ConnState.Closing && !stream.Closed) Ngtcp2.ConnShutdownStream(Conn, stream.Id, code);
        stream.OnWriteAborted(new QuicStreamAbortedException("stream aborted locally", code));
        stream.OnReadAborted(new QuicStreamAbortedException("stream aborted locally", code));
        ScheduleFlush();
    });

    /// <summary>Loop thread: drain stream work (credit, shutdown, send queue membership).</summary>
    internal void ProcessStreamWork()
    {
        while (StreamWork.TryDequeue(out var s))
        {
            Volatile.Write(ref s.Flags.WorkScheduled, 0);
            if (State >= ConnState.Closing) continue;
            var credit = Interlocked.Exchange(ref s.Flags.PendingCredit, 0);
            if (credit > 0)
            {
                // Bytes read after the stream closed still count against the connection's window:
                // its credit goes back too, or MAX_DATA would shrink with every stream the
                // application finished reading after ngtcp2 had closed it.
                if (!s.Closed) Ngtcp2.ConnExtendMaxStreamOffset(Conn, s.Id, (ulong)credit);
                Ngtcp2.ConnExtendMaxOffset(Conn, (ulong)credit);
            }
            if (s.Closed) continue;
            if (s.RemoteUniFinished && Streams.Remove(s.Id))
            {
                // libngtcp2 0.12.1 never closes a remote unidirectional stream (no stream_close
                // callback after its FIN or reset), so MAX_STREAMS would stay where it started:
                // the stream is finished here and its credit returned (spec/asport.md §7).
                Ngtcp2.ConnExtendMaxStreamsUni(Conn, 1);
                s.OnClosed(null);
                continue;
            }
            if (s.StopReadingRequested)
            {
                s.StopReadingRequested = false;
                Ngtcp2.ConnShutdownStreamRead(Conn, s.Id, 0);
            }
            if (!s.InSendQueue && !s.Blocked && s.HasSendWork)
            {
                s.InSendQueue = true;
                SendQueue.Enqueue(s);
            }
        }
    }

    internal void OnHandshakeCompleted()
    {
        State = ConnState.Established;
        ValidatedRemoteEndPoint ??= RemoteEndPoint;
        var datum = stackalloc byte[Layout.GnutlsDatum.Size];
        if (GnuTls.AlpnGetSelectedProtocol(Session, datum) == 0)
        {
            var p = *(byte**)(datum + Layout.GnutlsDatum.Data);
            var n = *(uint*)(datum + Layout.GnutlsDatum.DataSize);
            NegotiatedApplicationProtocol = Encoding.ASCII.GetString(p, (int)n);
        }
        UpdateDatagramSize();
        _handshake.TrySetResult();
        Endpoint.HandshakeOver(this);
        if (IsServer) Endpoint.OnAccepted(this);
    }

    internal void UpdateDatagramSize()
    {
        var remote = Ngtcp2.ConnGetRemoteTransportParams(Conn);
        if (remote == null || Options.MaxDatagramFrameSize == 0) { MaxDatagramPayloadSize = 0; return; }
        var frameMax = *(ulong*)(remote + Layout.TransportParams.MaxDatagramFrameSize);
        if (frameMax == 0) { MaxDatagramPayloadSize = 0; return; }
        var pathMax = (long)Ngtcp2.ConnGetPathMaxTxUdpPayloadSize(Conn);
        // Short header (1 + DCID ≤ 20 + packet number ≤ 4) + AEAD tag 16 + DATAGRAM type 1 + length 2.
        var byPath = pathMax - 1 - Layout.MaxCidLen - 4 - 16 - 3;
        MaxDatagramPayloadSize = (int)Math.Max(0, Math.Min((long)frameMax - 3, byPath));
    }

    internal void OnStreamOpened(long id)
    {
        var s = new QuicStream(this, id, Options.StreamSendBuffer);
        Streams[id] = s;
        _accepted.Writer.TryWrite(s);
    }

    internal void OnStreamClosed(long id, ulong? appError)
    {
        if (!Streams.Remove(id, out var s)) return;
        var local = ((id & 1) == 1) == IsServer;
        if (!local)
        {
            if ((id & 2) == 0) Ngtcp2.ConnExtendMaxStreamsBidi(Conn, 1);
            else Ngtcp2.ConnExtendMaxStreamsUni(Conn, 1);
        }
        s.OnClosed(appError is { } code && code != 0 ? new QuicStreamAbortedException($"stream closed with error {code}", code) : null);
    }

    internal Exception ClosedError() =>
        new QuicConnectionException(_closed.Task.IsCompleted ? "connection closed: " + _closed.Task.Result.Reason : "connection closed");

    /// <summary>Loop thread: enter the closing period with a CONNECTION_CLOSE we keep for retransmission.</summary>
    internal void CloseLocally(ulong code, string reason)
    {
        if (State >= ConnState.Closing) return;
        if (State == ConnState.Handshaking && Ngtcp2.ConnGetHandshakeCompleted(Conn) == 0)
        {
            // Nothing application-level to say before the handshake: just stop.
            Terminate(new QuicCloseInfo(reason.Length > 0 ? reason : "closed during handshake", false, code), deleteNow: true);
            return;
        }
        var r = Encoding.UTF8.GetBytes(reason);
        fixed (byte* rp = r) Ngtcp2.CcerrSetApplicationError(Ccerr, code, rp, (nuint)r.Length);
        WriteCloseAndTerminate(new QuicCloseInfo(reason.Length > 0 ? reason : "closed locally", false, code));
    }

    internal void WriteCloseAndTerminate(QuicCloseInfo info)
    {
        var buf = ArrayPool<byte>.Shared.Rent(QuicEndpoint.MaxPacketSize);
        nint n;
        fixed (byte* b = buf)
            n = Ngtcp2.ConnWriteConnectionClose(Conn, null, Ngtcp2.StructVersion, Endpoint.PktInfo, b, (nuint)QuicEndpoint.MaxPacketSize, Ccerr, QuicEndpoint.Now());
        if (n > 0)
        {
            ClosePacket = buf;
            ClosePacketLength = (int)n;
            Endpoint.Send(this, buf.AsSpan(0, (int)n));
        }
        else ArrayPool<byte>.Shared.Return(buf);
        Terminate(info, deleteNow: n <= 0);
        State = ConnState.Closing;
    }

    /// <summary>Loop thread: fail everything waiting on the connection and schedule its deletion.</summary>
    internal void Terminate(QuicCloseInfo info, bool deleteNow)
    {
        if (_closed.Task.IsCompleted) return;
        State = ConnState.Draining;
        var error = new QuicConnectionException("connection closed: " + info.Reason);
        _handshake.TrySetException(error);
        _ = _handshake.Task.Exception; // observed
        foreach (var s in Streams.Values) s.OnClosed(error);
        Streams.Clear();
        while (PendingOpens.TryDequeue(out var p)) p.Tcs.TrySetException(error);
        _accepted.Writer.TryComplete();
        _datagramsIn.Writer.TryComplete();
        while (DatagramsOut.TryDequeue(out var d)) DatagramDequeued(d.Buffer);
        var pto = Conn != 0 ? Ngtcp2.ConnGetPto(Conn) : 0;
        DeleteAt = deleteNow ? 0 : QuicEndpoint.Now() + 3 * pto;
        _closed.TrySetResult(info);
    }

    /// <summary>Loop thread: free the native objects. Called by the endpoint only.</summary>
    internal void Delete()
    {
        if (State == ConnState.Deleted) return;
        State = ConnState.Deleted;
        if (Conn != 0) Ngtcp2.ConnDel(Conn);
        Conn = 0;
        if (Session != 0) GnuTls.Deinit(Session);
        Session = 0;
        if (ClientCredentials != 0) GnuTls.CertificateFreeCredentials(ClientCredentials);
        ClientCredentials = 0;
        if (ClosePacket is not null) ArrayPool<byte>.Shared.Return(ClosePacket);
        ClosePacket = null;
        NativeMemory.Free(Native);
        Native = null;
        Self.Free();
    }

    /// <summary>Called from the gnutls verify callback during the handshake (loop thread).</summary>
    internal int VerifyPeerCertificate()
    {
        if (PinnedSha256 is null) return 0;
        uint count;
        var certs = GnuTls.CertificateGetPeers(Session, &count);
        if (certs == null || count == 0)
        {
            PeerVerifyFailure = "the server sent no certificate";
            return GnuTls.ECertificateError;
        }
        var data = *(byte**)(certs + Layout.GnutlsDatum.Data);
        var size = *(uint*)(certs + Layout.GnutlsDatum.DataSize);
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(new ReadOnlySpan<byte>(data, (int)size), hash);
        if (!CryptographicOperations.FixedTimeEquals(hash, PinnedSha256))
        {
            PeerVerifyFailure = $"server certificate SHA-256 {Convert.ToHexString(hash)} does not match the pin {Convert.ToHexString(PinnedSha256)}";
            return GnuTls.ECertificateError;
        }
        return 0;
    }

    /// <summary>Loop thread: the connection now sends to <paramref name="remote"/> (ngtcp2's current path).</summary>
    internal void UpdateRemote(ReadOnlySpan<byte> remote)
    {
        RemoteSocketAddress = new SocketAddress(Endpoint.LocalEndPoint.AddressFamily, remote.Length);
        remote.CopyTo(RemoteSocketAddress.Buffer.Span);
        RemoteKey = QuicEndpoint.AddressKey.Of(remote);
        RemoteEndPoint = (IPEndPoint)new IPEndPoint(IPAddress.Any, 0).Create(RemoteSocketAddress);
    }

    /// <summary>Loop thread, path_validation callback: ngtcp2 validated <paramref name="path"/>.</summary>
    internal void OnPathValidated(byte* path)
    {
        var addr = *(byte**)(path + Layout.Path.Remote + Layout.Addr.AddrPtr);
        var len = (int)*(uint*)(path + Layout.Path.Remote + Layout.Addr.AddrLen);
        if (addr == null || len <= 0 || len > 128) return;
        var sa = new SocketAddress(Endpoint.LocalEndPoint.AddressFamily, len);
        new ReadOnlySpan<byte>(addr, len).CopyTo(sa.Buffer.Span);
        ValidatedRemoteEndPoint = (IPEndPoint)new IPEndPoint(IPAddress.Any, 0).Create(sa);
    }
}
