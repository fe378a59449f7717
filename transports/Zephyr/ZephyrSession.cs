using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary>Steps both peers share: joining the relay (§7.3) and the TLS parameters (§7.4).</summary>
internal static class ZephyrSession
{
    /// <summary>Connects to a relay and reads the 12-byte assignment; returns the stream and the own zid.</summary>
    public static async Task<(Stream Stream, uint Zid)> JoinRelayAsync(INetworkDialer dialer, Destination relay, TimeSpan timeout, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        var stream = await dialer.ConnectTcpAsync(relay, limit.Token).ConfigureAwait(false);
        try
        {
            if (stream is NetworkStream ns) ns.Socket.NoDelay = true;
            byte[] assignment = new byte[ZephyrWire.MessageLength];
            await stream.ReadExactlyAsync(assignment, limit.Token).ConfigureAwait(false);
            var error = ZephyrWire.ParseAssignment(assignment, out uint zid);
            if (error != BindRequestError.None || zid > ZephyrWire.MaxZid)
                throw new TransportConnectException(ConnectFailure.General, $"relay {relay} sent no valid assignment ({error})");
            return (stream, zid);
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or OperationCanceledException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            if (e is OperationCanceledException && ct.IsCancellationRequested) throw;
            throw new TransportConnectException(e is OperationCanceledException ? ConnectFailure.TimedOut : ConnectFailure.HostUnreachable,
                $"relay {relay}: no assignment: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public static SslClientAuthenticationOptions ClientTls(X509Certificate2 own, byte[] serverPin) =>
        ClientTls(SslStreamCertificateContext.Create(own, null, offline: true), serverPin);

    public static SslClientAuthenticationOptions ClientTls(SslStreamCertificateContext own, byte[] serverPin)
    {
        var pins = new[] { serverPin };
        return new SslClientAuthenticationOptions
        {
            TargetHost = "",
            EnabledSslProtocols = SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            ClientCertificateContext = own,
            // The pin is the whole trust decision: chain and name errors of a self-signed certificate are expected.
            RemoteCertificateValidationCallback = (_, cert, _, _) => ZephyrCredentials.Matches(cert, pins),
        };
    }

    public static SslServerAuthenticationOptions ServerTls(X509Certificate2 own, IReadOnlyList<byte[]> clientPins) =>
        ServerTls(SslStreamCertificateContext.Create(own, null, offline: true), clientPins);

    public static SslServerAuthenticationOptions ServerTls(SslStreamCertificateContext own, IReadOnlyList<byte[]> clientPins) => new()
    {
        EnabledSslProtocols = SslProtocols.Tls13,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        ServerCertificateContext = own,
        ClientCertificateRequired = true,
        RemoteCertificateValidationCallback = (_, cert, _, _) => ZephyrCredentials.Matches(cert, clientPins),
    };
}
