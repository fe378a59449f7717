using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Socks;

/// <summary>Limits and timeouts of the SOCKS5 front end (spec/ipc.md §5.7).</summary>
public sealed record Socks5Limits
{
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public int MaxSessions { get; init; } = 16384;
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(2);
}

/// <summary>
/// The SOCKS5 front end for one transport (RFC 1928, RFC 1929, PT settings methods 0x09 and 0x80):
/// accepts on a loopback listener, negotiates, asks the transport for a connection and relays.
/// Every malformed message gets the reply the protocol has for it and a close; nothing stops the listener.
/// </summary>
public sealed class Socks5Listener : IAsyncDisposable
{
    private readonly TcpSessionListener _listener;
    private readonly IClientFactory _factory;
    private readonly TransportCounters _counters;
    private readonly Socks5Limits _limits;
    private readonly ILogger _log;
    private static long s_sessionIds;

    public Socks5Listener(string transport, IPEndPoint bind, IClientFactory factory, TransportCounters counters, Socks5Limits limits, ILogger log)
    {
        Transport = transport;
        _factory = factory;
        _counters = counters;
        _limits = limits;
        _log = log;
        _listener = new TcpSessionListener($"SOCKS {transport}", bind, RunSessionAsync, log, limits.MaxSessions, counters.SessionFailed);
    }

    public string Transport { get; }
    public IPEndPoint LocalEndPoint => _listener.LocalEndPoint;

    public int ActiveSessions => _listener.ActiveSessions;

    public void Start() => _listener.Start();

    /// <summary>Stops accepting, lets sessions finish until <paramref name="ct"/> fires, then aborts them.</summary>
    public Task StopAsync(CancellationToken ct) => _listener.StopAsync(ct);

    public ValueTask DisposeAsync() => _listener.DisposeAsync();

    private async Task RunSessionAsync(Socket socket, CancellationToken abort)
    {
        long started = System.Diagnostics.Stopwatch.GetTimestamp(); // spec/ipc.md §4.12 pthost_handshake_seconds
        long id = Interlocked.Increment(ref s_sessionIds);
        var clientStream = new NetworkStream(socket, ownsSocket: true);
        Stream? upstream = null;
        bool opened = false;
        try
        {
            var outcome = await HandshakeAsync(clientStream, id, abort).ConfigureAwait(false);
            if (outcome is null) return;
            (upstream, var leftover) = outcome.Value;
            opened = true;
            _counters.SessionOpened();
            _counters.Handshake.ObserveSince(started);
            if (leftover is not null)
            {
                await upstream.WriteAsync(leftover, abort).ConfigureAwait(false);
                _counters.AddBytesIn(leftover.Length);
            }
            await Relay.RunAsync(clientStream, upstream, _counters, abort).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.SessionEnded(Transport, id, e.Message);
        }
        catch (Exception e)
        {
            _log.SessionFailed(e, Transport, id);
        }
        finally
        {
            if (opened) _counters.SessionClosed();
            if (upstream is not null) await upstream.DisposeAsync().ConfigureAwait(false);
            await clientStream.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The handshake under its time limit. Its timer, token and reader live in this method's state only, which ends
    /// with the handshake: an idle session holds none of them.
    /// </summary>
    private async Task<(Stream, byte[]?)?> HandshakeAsync(NetworkStream clientStream, long id, CancellationToken abort)
    {
        using var handshake = CancellationTokenSource.CreateLinkedTokenSource(abort);
        handshake.CancelAfter(_limits.HandshakeTimeout);
        var reader = PipeReader.Create(clientStream, new StreamPipeReaderOptions(bufferSize: 512, minimumReadSize: 256, leaveOpen: true, useZeroByteReads: true));
        return await NegotiateAsync(reader, clientStream, id, handshake, abort).ConfigureAwait(false);
    }

    /// <summary>Runs the handshake; returns the upstream stream and any bytes the client sent after its request, or null when the session was refused (reply already sent).</summary>
    private async Task<(Stream, byte[]?)?> NegotiateAsync(PipeReader reader, NetworkStream client, long id, CancellationTokenSource handshake, CancellationToken abort)
    {
        var ct = handshake.Token;
        byte[] reply = new byte[22];
        try
        {
            // The first byte says which SOCKS version speaks (spec/ipc.md §5.11); nothing is consumed.
            var peek = await reader.ReadAsync(ct).ConfigureAwait(false);
            if (peek.Buffer.IsEmpty)
            {
                reader.AdvanceTo(peek.Buffer.Start);
                throw new EndOfStreamException();
            }
            bool socks4 = peek.Buffer.FirstSpan[0] == Socks4.Version;
            reader.AdvanceTo(peek.Buffer.Start);
            if (socks4) return await NegotiateSocks4Async(reader, client, id, handshake, abort).ConfigureAwait(false);

            // RFC 1928 §3: method selection.
            byte method = Socks5.MethodNoneAcceptable;
            Socks5Error error = default;
            (await ReadMessageAsync(reader, (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseGreeting(ref b, out method, out error), ct).ConfigureAwait(false))
                .ThrowIfInvalid(() => error);
            reply[0] = Socks5.Version;
            reply[1] = method;
            await HandshakeWrite.WriteAsync(client, reply.AsMemory(0, 2), ct).ConfigureAwait(false);
            if (method == Socks5.MethodNoneAcceptable)
            {
                _counters.SessionFailed("auth");
                _log.NoAcceptableMethod(Transport, id);
                await LingerCloseAsync(client, reader).ConfigureAwait(false);
                return null;
            }

            // Method-specific sub-negotiation: settings block (no reply of its own) or RFC 1929.
            ConnectionSettings settings = ConnectionSettings.Empty;
            Socks5Error? settingsError = null;
            if (method is Socks5.MethodJsonParameters or Socks5.MethodPtPrivate)
            {
                JObject? json = null;
                ParseStatus status;
                try
                {
                    status = await ReadMessageAsync(reader, (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseSettings(ref b, out json, out error), ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (handshake.IsCancellationRequested && !abort.IsCancellationRequested)
                {
                    // PT 3.0: a settings block that does not arrive in time is answered 0x11.
                    return await RefuseAsync(client, reader, new Socks5Error(Socks5.ReplySettingsTimeout, $"settings block not complete within {_limits.HandshakeTimeout.TotalSeconds:0} s"), id).ConfigureAwait(false);
                }
                if (status == ParseStatus.Invalid)
                {
                    if (error.Reply == Socks5.ReplySettingsTooLarge)
                        return await RefuseAsync(client, reader, error, id).ConfigureAwait(false); // the block cannot be skipped
                    settingsError = error;
                }
                else settings = new ConnectionSettings(json!, SettingsSource.Json);
            }
            else if (method == Socks5.MethodUserPass)
            {
                string? args = null;
                var status = await ReadMessageAsync(reader, (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseUserPass(ref b, out args, out error), ct).ConfigureAwait(false);
                string? problem = status == ParseStatus.Invalid ? error.Message : null;
                if (problem is null)
                {
                    try { settings = new ConnectionSettings(PtArgs.Parse(args!), SettingsSource.PtArgs); }
                    catch (FormatException fe) { problem = "PT arguments: " + fe.Message; }
                }
                // RFC 1929 §2: a non-zero status, then the server MUST close the connection.
                reply[0] = Socks5.UserPassVersion;
                reply[1] = problem is null ? (byte)0 : (byte)1;
                await HandshakeWrite.WriteAsync(client, reply.AsMemory(0, 2), ct).ConfigureAwait(false);
                if (problem is not null)
                {
                    _counters.SessionFailed("auth");
                    _log.SessionProblem(Transport, id, problem);
                    await LingerCloseAsync(client, reader).ConfigureAwait(false);
                    return null;
                }
            }

            // RFC 1928 §4: the request.
            Destination? destination = null;
            byte command = 0;
            bool udp = PtHost.Net.Udp.UdpCarrier.CanCarry(_factory);
            var requestStatus = await ReadMessageAsync(reader, (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseRequest(ref b, out destination, out command, udp, out error), ct).ConfigureAwait(false);
            if (requestStatus == ParseStatus.Invalid) return await RefuseAsync(client, reader, error, id).ConfigureAwait(false);
            if (command == Socks5.CmdUdpAssociate)
            {
                // RFC 1928 §7 (spec/ipc.md §5.12): the TCP connection stays as the association's control connection.
                handshake.CancelAfter(Timeout.InfiniteTimeSpan);
                if (settingsError is { } se) return await RefuseAsync(client, reader, se, id).ConfigureAwait(false);
                await reader.CompleteAsync().ConfigureAwait(false);
                await Socks5UdpAssociation.RunAsync(Transport, client, destination!, _factory, _counters, id, _log, abort).ConfigureAwait(false);
                return null;
            }
            return await ConnectAsync(client, reader, destination!, settings, settingsError, id, handshake, abort, socks4: false).ConfigureAwait(false);
        }
        catch (InvalidMessageException e)
        {
            return await RefuseAsync(client, reader, e.Error, id).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!abort.IsCancellationRequested)
        {
            _counters.SessionFailed("timeout");
            _log.HandshakeTimeout(Transport, id, _limits.HandshakeTimeout.TotalSeconds);
            return null;
        }
        catch (EndOfStreamException)
        {
            _log.ClosedInHandshake(Transport, id);
            return null;
        }
    }

    /// <summary>SOCKS4/4a: one request carrying the destination and, in USERID, PT 1.0 arguments.</summary>
    private async Task<(Stream, byte[]?)?> NegotiateSocks4Async(PipeReader reader, NetworkStream client, long id, CancellationTokenSource handshake, CancellationToken abort)
    {
        Destination? destination = null;
        string? userId = null;
        Socks5Error error = default;
        var status = await ReadMessageAsync(reader, (ref ReadOnlySequence<byte> b) => Socks4.TryParseRequest(ref b, out destination, out userId, out error), handshake.Token).ConfigureAwait(false);
        if (status == ParseStatus.Invalid) return await RefuseAsync(client, reader, error, id, socks4: true).ConfigureAwait(false);
        ConnectionSettings settings = ConnectionSettings.Empty;
        if (userId!.Length > 0)
        {
            try { settings = new ConnectionSettings(PtArgs.Parse(userId), SettingsSource.PtArgs); }
            catch (FormatException fe)
            {
                return await RefuseAsync(client, reader, new Socks5Error(Socks4.ReplyRejected, "PT arguments in USERID: " + fe.Message), id, socks4: true).ConfigureAwait(false);
            }
        }
        return await ConnectAsync(client, reader, destination!, settings, null, id, handshake, abort, socks4: true).ConfigureAwait(false);
    }

    /// <summary>
    /// The part both SOCKS versions share once the request is read: settings checked, the transport
    /// asked for a connection, and the reply of the client's version written.
    /// </summary>
    private async Task<(Stream, byte[]?)?> ConnectAsync(NetworkStream client, PipeReader reader, Destination destination, ConnectionSettings settings,
        Socks5Error? settingsError, long id, CancellationTokenSource handshake, CancellationToken abort, bool socks4)
    {
        var ct = handshake.Token;
        byte[] reply = new byte[22];
            // The client has said everything; from here the connect timeout governs (§5.7).
            handshake.CancelAfter(Timeout.InfiniteTimeSpan);
            if (handshake.IsCancellationRequested) throw new OperationCanceledException(ct);
            ct = abort;
            if (settingsError is { } se) return await RefuseAsync(client, reader, se, id, socks4).ConfigureAwait(false);

            object? parsed;
            try { parsed = _factory.ParseSettings(settings); }
            catch (SettingsException e)
            {
                return await RefuseAsync(client, reader, new Socks5Error(Socks5.ReplySettingsInvalidKeys, e.Message), id, socks4).ConfigureAwait(false);
            }

            Stream upstream;
            using (var connect = CancellationTokenSource.CreateLinkedTokenSource(abort))
            {
                connect.CancelAfter(_limits.ConnectTimeout);
                try
                {
                    upstream = await _factory.ConnectAsync(new ConnectRequest(destination!, parsed, id), connect.Token).ConfigureAwait(false);
                }
                catch (TransportConnectException e)
                {
                    return await RefuseAsync(client, reader, new Socks5Error((byte)e.Failure, e.Message), id, socks4).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!abort.IsCancellationRequested)
                {
                    return await RefuseAsync(client, reader, new Socks5Error((byte)ConnectFailure.TimedOut, $"transport connect took longer than {_limits.ConnectTimeout.TotalSeconds:0} s"), id, socks4).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or SocketException)
                {
                    return await RefuseAsync(client, reader, new Socks5Error((byte)ConnectFailure.General, e.Message), id, socks4).ConfigureAwait(false);
                }
            }

            byte[]? leftover = null;
            try
            {
                var bound = (upstream as NetworkStream)?.Socket.LocalEndPoint as IPEndPoint;
                int n = socks4 ? Socks4.WriteReply(reply, Socks4.ReplyGranted, bound) : Socks5.WriteReply(reply, Socks5.ReplySucceeded, bound);
                await HandshakeWrite.WriteAsync(client, reply.AsMemory(0, n), ct).ConfigureAwait(false);
                // Bytes the client pipelined after its request are already buffered: pass them on, lose none.
                if (reader.TryRead(out var rest))
                {
                    if (!rest.Buffer.IsEmpty) leftover = rest.Buffer.ToArray();
                    reader.AdvanceTo(rest.Buffer.End);
                }
                await reader.CompleteAsync().ConfigureAwait(false);
            }
            catch
            {
                await upstream.DisposeAsync().ConfigureAwait(false);
                throw;
            }
            _log.Connected(Transport, id, destination);
            return (upstream, leftover);
    }

    private async Task<(Stream, byte[]?)?> RefuseAsync(NetworkStream client, PipeReader reader, Socks5Error error, long id, bool socks4 = false)
    {
        _counters.SessionFailed("refused");
        _log.Refused(socks4 ? "4" : "5", Transport, id, error.Reply, error.Message);
        byte[] reply = new byte[22];
        // A refused greeting is answered with "no acceptable methods" (05 FF); every later message with a reply.
        // SOCKS4 has one failure code (91) for everything.
        int n = socks4 ? Socks4.WriteReply(reply, Socks4.ReplyRejected)
            : error.Reply == Socks5.MethodNoneAcceptable ? WriteMethodRefusal(reply) : Socks5.WriteReply(reply, error.Reply);
        try
        {
            using var cts = new CancellationTokenSource(_limits.DrainTimeout);
            await client.WriteAsync(reply.AsMemory(0, n), cts.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException) { return null; }
        await LingerCloseAsync(client, reader).ConfigureAwait(false);
        return null;

        static int WriteMethodRefusal(byte[] b) { b[0] = Socks5.Version; b[1] = Socks5.MethodNoneAcceptable; return 2; }
    }

    /// <summary>
    /// Sends FIN and reads (discarding) for a short while before closing, so that unread input does
    /// not turn the close into a reset that destroys the reply in flight.
    /// </summary>
    private async Task LingerCloseAsync(NetworkStream client, PipeReader reader)
    {
        try
        {
            await reader.CompleteAsync().ConfigureAwait(false);
            client.Socket.Shutdown(SocketShutdown.Send);
            using var cts = new CancellationTokenSource(_limits.DrainTimeout);
            byte[] sink = ArrayPool<byte>.Shared.Rent(4096);
            try
            {
                int total = 0;
                int n;
                while (total < 256 * 1024 && (n = await client.ReadAsync(sink, cts.Token).ConfigureAwait(false)) > 0) total += n;
            }
            finally { ArrayPool<byte>.Shared.Return(sink); }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException) { }
    }

    private delegate ParseStatus Parser(ref ReadOnlySequence<byte> buffer);

    /// <summary>Reads until <paramref name="parse"/> completes or rejects one message; consumes only that message.</summary>
    private static async ValueTask<ParseStatus> ReadMessageAsync(PipeReader reader, Parser parse, CancellationToken ct)
    {
        while (true)
        {
            var result = await reader.ReadAsync(ct).ConfigureAwait(false);
            var buffer = result.Buffer;
            var status = parse(ref buffer);
            if (status == ParseStatus.Incomplete)
            {
                reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                if (result.IsCompleted) throw new EndOfStreamException();
                continue;
            }
            reader.AdvanceTo(status == ParseStatus.Done || !buffer.Equals(result.Buffer) ? buffer.Start : result.Buffer.Start);
            return status;
        }
    }
}

internal sealed class InvalidMessageException(Socks5Error error) : Exception(error.Message)
{
    public Socks5Error Error { get; } = error;
}

internal static class ParseStatusExtensions
{
    public static void ThrowIfInvalid(this ParseStatus status, Func<Socks5Error> error)
    {
        if (status == ParseStatus.Invalid) throw new InvalidMessageException(error());
    }
}
