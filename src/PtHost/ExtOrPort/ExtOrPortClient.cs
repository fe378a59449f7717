using System.Buffers;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Socks;

namespace PtHost.ExtOrPort;

/// <summary>
/// The PT's side of an Extended ORPort connection (ext-orport-spec §3–§4): SAFE_COOKIE
/// authentication with the cookie file re-read for every connection, then USERADDR, TRANSPORT and
/// DONE, and the relay's OKAY. Any failure ends that one connection with a log line.
/// </summary>
public sealed class ExtOrPortClient(IPEndPoint extOrPort, string cookieFile, string transport, INetworkDialer dialer, ILogger log)
{
    public static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(15);

    public IPEndPoint EndPoint => extOrPort;

    /// <summary>Connects, authenticates and announces the session; returns the OR stream.</summary>
    public async ValueTask<Stream> OpenAsync(EndPoint? userAddress, CancellationToken cancellationToken)
    {
        byte[] cookie;
        try { cookie = ExtOrPortWire.ParseCookieFile(await File.ReadAllBytesAsync(cookieFile, cancellationToken).ConfigureAwait(false)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            log.LogWarning("ExtORPort: cookie file {File}: {Error}", cookieFile, e.Message);
            throw new TransportConnectException(ConnectFailure.General, $"ExtORPort cookie file {cookieFile}: {e.Message}", e);
        }
        var stream = await dialer.ConnectTcpAsync(new Destination(extOrPort.Address.ToString(), (ushort)extOrPort.Port), cancellationToken).ConfigureAwait(false);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(HandshakeTimeout);
        try
        {
            await HandshakeAsync(stream, cookie, userAddress as IPEndPoint, timeout.Token).ConfigureAwait(false);
            return stream;
        }
        catch (Exception e) when (e is ExtOrPortException or IOException or EndOfStreamException
                                  || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            string why = e is OperationCanceledException ? $"no answer within {HandshakeTimeout.TotalSeconds:0} s" : e.Message;
            log.LogWarning("ExtORPort {EndPoint}: session from {User} refused: {Reason}", extOrPort, userAddress, why);
            throw new TransportConnectException(ConnectFailure.General, "ExtORPort: " + why, e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task HandshakeAsync(Stream stream, byte[] cookie, IPEndPoint? userAddress, CancellationToken ct)
    {
        // §3: the relay lists its authentication types, ending with 0; we pick SAFE_COOKIE.
        byte[] one = new byte[1];
        bool safeCookie = false;
        for (int count = 0; ; count++)
        {
            await stream.ReadExactlyAsync(one, ct).ConfigureAwait(false);
            if (one[0] == ExtOrPortWire.AuthListEnd) break;
            if (one[0] == ExtOrPortWire.AuthSafeCookie) safeCookie = true;
            if (count > 255) throw new ExtOrPortException("the relay's list of authentication types does not end");
        }
        if (!safeCookie) throw new ExtOrPortException("the relay does not offer SAFE_COOKIE authentication");

        // One buffer for the handshake (offsets 0–255), our commands (256 on) and each reply body, which may be as long
        // as the parser accepts (MaxBodyLength, spec/ipc.md §10.4): a smaller one broke sessions on a long CONTROL reply.
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ExtOrPortWire.MaxBodyLength);
        try
        {
            buffer[0] = ExtOrPortWire.AuthSafeCookie;
            var clientNonce = buffer.AsMemory(1, ExtOrPortWire.NonceLength);
            RandomNumberGenerator.Fill(clientNonce.Span);
            await stream.WriteAsync(buffer.AsMemory(0, 1 + ExtOrPortWire.NonceLength), ct).ConfigureAwait(false);

            var serverHashAndNonce = buffer.AsMemory(64, ExtOrPortWire.HashLength + ExtOrPortWire.NonceLength);
            await stream.ReadExactlyAsync(serverHashAndNonce, ct).ConfigureAwait(false);
            var serverHash = serverHashAndNonce[..ExtOrPortWire.HashLength];
            var serverNonce = serverHashAndNonce[ExtOrPortWire.HashLength..];
            Span<byte> expected = stackalloc byte[ExtOrPortWire.HashLength];
            ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ServerHashContext, clientNonce.Span, serverNonce.Span, expected);
            if (!CryptographicOperations.FixedTimeEquals(expected, serverHash.Span))
                throw new ExtOrPortException("the relay's ServerHash does not match the cookie (wrong cookie file?)");

            var clientHash = buffer.AsMemory(192, ExtOrPortWire.HashLength);
            ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ClientHashContext, clientNonce.Span, serverNonce.Span, clientHash.Span);
            await stream.WriteAsync(clientHash, ct).ConfigureAwait(false);
            await stream.ReadExactlyAsync(one, ct).ConfigureAwait(false);
            if (one[0] != 1) throw new ExtOrPortException($"the relay refused our ClientHash (status {one[0]})");

            // §4: USERADDR, TRANSPORT, DONE in one write; then OKAY or DENY.
            int n = 0;
            var frames = buffer.AsSpan(256);
            if (userAddress is not null) n += ExtOrPortWire.WriteCommand(frames[n..], ExtOrPortWire.CmdUserAddr, ExtOrPortWire.UserAddrBody(userAddress));
            n += ExtOrPortWire.WriteCommand(frames[n..], ExtOrPortWire.CmdTransport, Encoding.ASCII.GetBytes(transport));
            n += ExtOrPortWire.WriteCommand(frames[n..], ExtOrPortWire.CmdDone, default);
            await stream.WriteAsync(buffer.AsMemory(256, n), ct).ConfigureAwait(false);

            while (true)
            {
                var header = buffer.AsMemory(0, 4);
                await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
                ushort command = (ushort)(header.Span[0] << 8 | header.Span[1]);
                int length = header.Span[2] << 8 | header.Span[3];
                if (length > ExtOrPortWire.MaxBodyLength) throw new ExtOrPortException($"reply body of {length} bytes");
                if (length > 0) await stream.ReadExactlyAsync(buffer.AsMemory(0, length), ct).ConfigureAwait(false);
                switch (command)
                {
                    case ExtOrPortWire.ReplyOkay: return;
                    case ExtOrPortWire.ReplyDeny: throw new ExtOrPortException("the relay answered DENY");
                    case ExtOrPortWire.ReplyControl: continue; // §4.2: control messages may come first; none concern us
                    default: throw new ExtOrPortException($"unexpected reply 0x{command:x4}");
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}

/// <summary>The relay broke the ExtORPort protocol or refused us.</summary>
public sealed class ExtOrPortException(string message) : Exception(message);
