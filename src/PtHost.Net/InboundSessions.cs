using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net.Udp;

namespace PtHost.Net;

/// <summary>Opens a server session's onward stream: the bound target, an allow-listed destination, or the ExtORPort (spec/ipc.md §3.6, §10.4).</summary>
/// <param name="destination">What the preamble named; null for none (and for sessions without a preamble).</param>
/// <param name="remote">The transport-level peer, for the ExtORPort's USERADDR.</param>
public delegate ValueTask<Stream> OnwardConnect(Destination? destination, EndPoint? remote, CancellationToken cancellationToken);

/// <summary>
/// Hands a stream session to an application in the same process (spec/adapters.md §5.8) after the success reply:
/// <paramref name="session"/> is the transport's own stream (counted), which the application disposes when done.
/// Throws <see cref="TransportConnectException"/> when the application takes no more sessions.
/// </summary>
public delegate ValueTask SessionDelivery(Stream session, Destination? destination, EndPoint? remote, CancellationToken cancellationToken);

/// <summary>
/// The host's side of one server transport's sessions (spec/session.md §3): reads the preamble,
/// opens the onward connection or the UDP association, replies, relays with half-closes, counts the
/// session and its bytes in the transport's counters, logs, and disposes both streams. It knows
/// nothing of the process around it (IPC, configuration): the executable and an in-process host
/// build it the same way.
/// </summary>
public sealed class InboundSessions : IInboundHandler
{
    /// <summary>Connections a TCP listener serves at once; one over it is reset (spec/session.md §4).</summary>
    public const int MaxTcpSessions = 16384;

    private static long s_ids;
    private static readonly byte[] s_succeeded = [0];
    private readonly string _transport;
    private readonly OnwardConnect _onward;
    private readonly SessionDelivery? _deliver;
    private readonly ServerAssociations? _associations;
    private readonly TransportCounters _counters;
    private readonly ILogger _log;

    /// <param name="transport">The transport's name, for logs.</param>
    /// <param name="onward">Opens the onward stream of a stream session.</param>
    /// <param name="associations">The process's UDP associations; null when this server carries no UDP.</param>
    /// <param name="counters">The transport's STATUS counters.</param>
    public InboundSessions(string transport, OnwardConnect onward, ServerAssociations? associations, TransportCounters counters, ILogger log)
    {
        _transport = transport;
        _onward = onward;
        _associations = associations;
        _counters = counters;
        _log = log;
    }

    /// <summary>
    /// Sessions handed to the application itself (spec/adapters.md §5.8): after the reply, each stream session's
    /// transport stream goes to <paramref name="deliver"/>, with no onward connection and no relay, and is served until
    /// the application disposes it or the server stops. This server carries no UDP.
    /// </summary>
    public InboundSessions(string transport, SessionDelivery deliver, TransportCounters counters, ILogger log)
        : this(transport, static (_, _, _) => throw new InvalidOperationException("sessions are delivered, not dialled"), null, counters, log) =>
        _deliver = deliver;

    private static long NextId() => Interlocked.Increment(ref s_ids);

    /// <inheritdoc/>
    public Task ServeAsync(Stream stream, EndPoint? remote, CancellationToken cancellationToken) =>
        ServeRequestAsync(NextId(), stream, remote, null, cancellationToken);

    /// <inheritdoc/>
    public Task ServeAsync(Stream stream, EndPoint? remote, SessionRequest request, CancellationToken cancellationToken) =>
        ServeRequestAsync(NextId(), stream, remote, request, cancellationToken);

    /// <summary>One stream session; its preamble is read first when <paramref name="request"/> is null (one state machine for the whole session).</summary>
    private async Task ServeRequestAsync(long id, Stream stream, EndPoint? remote, SessionRequest? request, CancellationToken ct)
    {
        if (request is null)
        {
            try
            {
                request = await ReadPreambleAsync(stream, ct).ConfigureAwait(false);
            }
            catch (InvalidDataException)
            {
                // Not a PtHost client: no reply; a stream that can end with an error does (spec/session.md §3.1).
                _counters.SessionFailed("preamble");
                _log.NotAPreamble(_transport, id, remote);
                if (stream is IAbortable abortable) abortable.Abort();
                await stream.DisposeAsync().ConfigureAwait(false);
                return;
            }
            catch (Exception e) when (IsSessionEnd(e))
            {
                // A preamble that did not arrive within 10 s, or a peer that vanished.
                _counters.SessionFailed("timeout");
                _log.EndedBeforePreamble(_transport, id, remote, e.Message);
                await stream.DisposeAsync().ConfigureAwait(false);
                return;
            }
        }
        long started = System.Diagnostics.Stopwatch.GetTimestamp(); // spec/ipc.md §4.12 pthost_handshake_seconds
        Stream? onward = null;
        bool opened = false, failed = false;
        try
        {
            if (request.Error is { } error)
            {
                failed = true;
                _counters.SessionFailed("refused");
                _log.SessionRefused(_transport, id, remote, error);
                await RefuseAsync(stream, ConnectFailure.AddressTypeNotSupported, ct).ConfigureAwait(false);
                return;
            }
            if (_deliver is not null && request.Kind == SessionKind.Stream)
            {
                await ReplyAsync(stream, 0, ct).ConfigureAwait(false);
                opened = true;
                _counters.SessionOpened();
                await DeliverAsync(stream, request.Destination, remote, ct).ConfigureAwait(false);
                return;
            }
            try
            {
                onward = request.Kind == SessionKind.Datagram
                    ? await OpenAssociationAsync(id, ct).ConfigureAwait(false)
                    : await _onward(request.Destination, remote, ct).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                failed = true;
                _counters.SessionFailed("connect");
                _log.SessionRefused(_transport, id, remote, e.Message);
                await RefuseAsync(stream, e.Failure, ct).ConfigureAwait(false);
                return;
            }
            await ReplyAsync(stream, 0, ct).ConfigureAwait(false);
            opened = true;
            _counters.SessionOpened();
            _counters.Handshake.ObserveSince(started);
            if (request.Kind == SessionKind.Datagram)
                _log.AssociationInStream(_transport, id, remote);
            await Relay.RunAsync(stream, onward, _counters, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (IsSessionEnd(e))
        {
            if (!opened && !failed) _counters.SessionFailed("aborted"); // the peer vanished, or shutdown aborted it, before the reply
            _log.SessionEnded(_transport, id, e.Message);
        }
        finally
        {
            if (opened) _counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The preamble within <see cref="SessionPreamble.Timeout"/>; its timer lives only as long as this call.</summary>
    private static async Task<SessionRequest> ReadPreambleAsync(Stream stream, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(SessionPreamble.Timeout);
        return await SessionPreamble.ReadAsync(stream, limit.Token).ConfigureAwait(false);
    }

    /// <summary>
    /// The transport's stream to the application, counted; returns once the application disposed it (the transport
    /// then ends the connection as after a relay) or the server stops (the stream is disposed under the application).
    /// </summary>
    private async Task DeliverAsync(Stream stream, Destination? destination, EndPoint? remote, CancellationToken ct)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var session = new CountedStream(stream, _counters, () => done.TrySetResult());
        try
        {
            await _deliver!(session, destination, remote, ct).ConfigureAwait(false);
        }
        catch (TransportConnectException)
        {
            await session.DisposeAsync().ConfigureAwait(false);
            throw new OperationCanceledException("the application takes no more sessions");
        }
        await done.Task.WaitAsync(ct).ConfigureAwait(false);
    }

    private ValueTask<Stream> OpenAssociationAsync(long id, CancellationToken ct) =>
        _associations is null
            ? throw new TransportConnectException(ConnectFailure.CommandNotSupported, "this server carries no UDP")
            : _associations.OpenAsync(id, ct);

    /// <summary>The reply byte, written within <see cref="SessionPreamble.Timeout"/> (on a socket: at once, <see cref="HandshakeWrite"/>).</summary>
    private static async Task ReplyAsync(Stream stream, byte code, CancellationToken ct)
    {
        ReadOnlyMemory<byte> reply = code == 0 ? s_succeeded : new[] { code };
        if (stream is System.Net.Sockets.NetworkStream)
        {
            await HandshakeWrite.WriteAsync(stream, reply, ct).ConfigureAwait(false);
            return;
        }
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(SessionPreamble.Timeout);
        await stream.WriteAsync(reply, limit.Token).ConfigureAwait(false);
    }

    /// <summary>
    /// A failure reply (spec/session.md §3.3): the byte, then the end of our direction, then what the
    /// client still sends is read and dropped until it closes, at most <see cref="SessionPreamble.Timeout"/>;
    /// closing at once could destroy the reply (a TCP reset for unread data, a QUIC STOP_SENDING).
    /// </summary>
    private static async Task RefuseAsync(Stream stream, ConnectFailure failure, CancellationToken ct)
    {
        await ReplyAsync(stream, (byte)failure, ct).ConfigureAwait(false);
        Relay.ShutdownWrite(stream);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(SessionPreamble.Timeout);
        byte[] drop = new byte[512];
        try { while (await stream.ReadAsync(drop, limit.Token).ConfigureAwait(false) > 0) { } }
        catch (Exception e) when (IsSessionEnd(e)) { }
    }

    /// <inheritdoc/>
    public async Task ServeRawAsync(Stream stream, EndPoint? remote, CancellationToken cancellationToken)
    {
        long id = NextId();
        Stream? onward = null;
        bool opened = false;
        try
        {
            if (_deliver is not null)
            {
                opened = true;
                _counters.SessionOpened();
                await DeliverAsync(stream, null, remote, cancellationToken).ConfigureAwait(false);
                return;
            }
            try { onward = await _onward(null, remote, cancellationToken).ConfigureAwait(false); }
            catch (TransportConnectException e)
            {
                _counters.SessionFailed();
                _log.SessionRefused(_transport, id, remote, e.Message);
                return;
            }
            opened = true;
            _counters.SessionOpened();
            await Relay.RunAsync(stream, onward, _counters, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (IsSessionEnd(e))
        {
            _log.SessionEnded(_transport, id, e.Message);
        }
        finally
        {
            if (opened) _counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc/>
    public async Task ServeAssociationAsync(IDatagramCarrier carrier, EndPoint? remote, CancellationToken cancellationToken)
    {
        long id = NextId();
        var frames = new DatagramCarrierStream(carrier);
        Stream? association = null;
        Task idle = Task.CompletedTask;
        bool opened = false;
        try
        {
            var open = await frames.ReceiveOpenAsync(cancellationToken).ConfigureAwait(false);
            if (open is null) return; // the carrier ended, or stayed silent, before its first datagram
            if (open == false)
            {
                _counters.SessionFailed();
                _log.NotOpen(_transport, id, remote);
                frames.SendClose();
                return;
            }
            try { association = await OpenAssociationAsync(id, cancellationToken).ConfigureAwait(false); }
            catch (TransportConnectException e)
            {
                _counters.SessionFailed();
                _log.AssociationRefused(_transport, id, remote, e.Message);
                frames.SendClose();
                return;
            }
            opened = true;
            _counters.SessionOpened();
            _log.AssociationOpened(_transport, id, remote);
            idle = frames.IdleLoopAsync(t => _log.AssociationIdle(_transport, id, t.TotalSeconds));
            await Relay.RunAsync(frames, association, _counters.AddBytesIn, _counters.AddBytesOut, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (IsSessionEnd(e))
        {
            _log.AssociationEnded(_transport, id, e.Message);
        }
        finally
        {
            if (opened)
            {
                _counters.SessionClosed();
                var (fromClient, toClient, tooLarge, notSent, malformed) = frames.Counts;
                _log.AssociationCounts(_transport, id, fromClient, toClient, tooLarge, notSent, malformed);
            }
            if (association is not null) await association.DisposeAsync().ConfigureAwait(false);
            frames.End();
            await idle.ConfigureAwait(false);
            await frames.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc/>
    public void SessionFailed(EndPoint? remote, string reason)
    {
        _counters.SessionFailed();
        _log.FailedBeforeBegin(_transport, remote, reason);
    }

    /// <inheritdoc/>
    public ISessionListener ListenTcp(IPEndPoint bindAddress, Func<Socket, CancellationToken, Task> serve)
    {
        TcpSessionListener listener;
        try { listener = new TcpSessionListener(_transport, bindAddress, serve, _log, MaxTcpSessions, _counters.SessionFailed); }
        catch (SocketException e)
        {
            throw new TransportOptionsException($"cannot listen on {bindAddress}: {e.SocketErrorCode}", e);
        }
        listener.Start();
        return listener;
    }

    /// <summary>How a session's I/O ends when the peer or the shutdown ends it.</summary>
    private static bool IsSessionEnd(Exception e) =>
        e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException
            or System.Security.Authentication.AuthenticationException;
}
