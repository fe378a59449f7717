using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace PtHost.Quic;

/// <summary>A server certificate and its private key, both PEM (what gnutls loads).</summary>
public sealed class QuicCertificate
{
    public QuicCertificate(string certificatePem, string privateKeyPem)
    {
        CertificatePem = certificatePem;
        PrivateKeyPem = privateKeyPem;
        using var cert = X509Certificate2.CreateFromPem(certificatePem);
        Sha256 = SHA256.HashData(cert.RawData);
    }

    public string CertificatePem { get; }
    public string PrivateKeyPem { get; }

    /// <summary>SHA-256 of the certificate's DER encoding: the value a client pins.</summary>
    public byte[] Sha256 { get; }

    /// <summary>Reads both PEM files; the key through <see cref="PtHost.Net.PrivateFile"/>: a symbolic link, a
    /// file of another user or one open to group or others is refused with <see cref="UnauthorizedAccessException"/>.</summary>
    public static QuicCertificate Load(string certificateFile, string keyFile) =>
        new(File.ReadAllText(certificateFile), PtHost.Net.PrivateFile.ReadAllText(keyFile));

    /// <summary>A fresh ECDSA P-256 self-signed certificate (for tests and pinned deployments).</summary>
    public static QuicCertificate CreateSelfSigned(string commonName)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=" + commonName, key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(commonName);
        request.CertificateExtensions.Add(san.Build());
        using var cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddYears(5));
        return new QuicCertificate(cert.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem());
    }
}

/// <summary>How a client checks the server certificate. There is deliberately no
/// "accept anything": a client must choose a pin or the system trust store.</summary>
public sealed class QuicPeerVerification
{
    private QuicPeerVerification(byte[]? pin, string? serverName)
    {
        PinnedSha256 = pin;
        TrustedServerName = serverName;
    }

    /// <summary>Accept exactly the certificate whose DER has this SHA-256.</summary>
    public byte[]? PinnedSha256 { get; }

    /// <summary>Verify the chain against the system trust store and the name against this host name.</summary>
    public string? TrustedServerName { get; }

    public static QuicPeerVerification Pinned(byte[] sha256)
    {
        if (sha256 is not { Length: 32 }) throw new ArgumentException("a certificate pin is 32 bytes of SHA-256", nameof(sha256));
        return new QuicPeerVerification((byte[])sha256.Clone(), null);
    }

    public static QuicPeerVerification SystemTrust(string serverName)
    {
        ArgumentException.ThrowIfNullOrEmpty(serverName);
        return new QuicPeerVerification(null, serverName);
    }
}

/// <summary>ngtcp2_cc_algo values.</summary>
public enum QuicCongestionControl { Reno = 0, Cubic = 1, Bbr = 2, Bbr2 = 3 }

/// <summary>Settings shared by both roles.</summary>
public class QuicConnectionOptions
{
    /// <summary>ALPN protocol ids offered (client) or accepted (server); at least one.</summary>
    public IReadOnlyList<string> ApplicationProtocols { get; init; } = [];
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>RFC 9221 max_datagram_frame_size we accept; 0 turns datagrams off.</summary>
    public int MaxDatagramFrameSize { get; init; } = 65535;
    /// <summary>Initial flow-control windows; ngtcp2 grows them (auto-tuning, as the application
    /// keeps up with a longer round trip) up to the Max values below.</summary>
    public int StreamReceiveWindow { get; init; } = 1 << 20;
    public int ConnectionReceiveWindow { get; init; } = 8 << 20;
    public int MaxStreamReceiveWindow { get; init; } = 16 << 20;
    public int MaxConnectionReceiveWindow { get; init; } = 32 << 20;
    public int MaxIncomingBidirectionalStreams { get; init; } = 256;
    public int MaxIncomingUnidirectionalStreams { get; init; } = 256;
    /// <summary>Bytes a stream may hold queued and unacknowledged before WriteAsync waits.</summary>
    public int StreamSendBuffer { get; init; } = 4 << 20;
    public int DatagramSendQueue { get; init; } = 512;
    /// <summary>ngtcp2's congestion controller for this side's sending. BBR by default: on a path
    /// with 1 % random loss CUBIC fell to ~16 Mbit/s where BBR kept ~220 (the rud benchmark's
    /// lossy link, 10 ms RTT), and on loopback it is no slower.</summary>
    public QuicCongestionControl CongestionControl { get; init; } = QuicCongestionControl.Bbr;
    public int DatagramReceiveQueue { get; init; } = 512;

    internal void Validate()
    {
        if (ApplicationProtocols.Count == 0) throw new ArgumentException("at least one ALPN protocol is required");
        foreach (var p in ApplicationProtocols)
            if (string.IsNullOrEmpty(p) || p.Length > 255) throw new ArgumentException($"invalid ALPN protocol '{p}'");
        if (IdleTimeout <= TimeSpan.Zero || HandshakeTimeout <= TimeSpan.Zero) throw new ArgumentException("timeouts must be positive");
        if (MaxDatagramFrameSize is < 0 or > 65535) throw new ArgumentException("MaxDatagramFrameSize must be 0..65535");
        if (StreamReceiveWindow < 1024 || ConnectionReceiveWindow < StreamReceiveWindow) throw new ArgumentException("receive windows too small");
        if (MaxStreamReceiveWindow < StreamReceiveWindow || MaxConnectionReceiveWindow < ConnectionReceiveWindow || MaxConnectionReceiveWindow < MaxStreamReceiveWindow)
            throw new ArgumentException("maximum receive windows must not be below the initial ones");
        if (StreamSendBuffer < 1024 || DatagramSendQueue < 1 || DatagramReceiveQueue < 1) throw new ArgumentException("queues too small");
    }
}

public sealed class QuicClientOptions : QuicConnectionOptions
{
    /// <summary>Required. See <see cref="QuicPeerVerification"/>.</summary>
    public QuicPeerVerification? Verification { get; init; }
    /// <summary>SNI; defaults to the trust-store name when that mode is used.</summary>
    public string? ServerName { get; init; }
}

public sealed class QuicServerOptions : QuicConnectionOptions
{
    public QuicCertificate? Certificate { get; init; }
    /// <summary>Secret from which stateless reset tokens are derived (RFC 9000 §10.3); random when null.
    /// Keep it across restarts so a restarted server can reset connections it forgot.</summary>
    public byte[]? StatelessResetSecret { get; init; }
    public int AcceptQueue { get; init; } = 128;
    /// <summary>Connections the endpoint holds at once (handshaking, established or closing); an Initial beyond it is dropped.</summary>
    public int MaxConnections { get; init; } = 4096;
    /// <summary>Connections one source holds at once: one IPv4 address, or one IPv6 prefix of <see cref="SourcePrefixV6"/> bits.</summary>
    public int MaxConnectionsPerSource { get; init; } = 16;
    public int SourcePrefixV6 { get; init; } = 64;
    /// <summary>When a new connection must first prove its address with a Retry token (RFC 9000 §8.1.2).</summary>
    public QuicRetryPolicy Retry { get; init; } = QuicRetryPolicy.UnderLoad;
    /// <summary><see cref="QuicRetryPolicy.UnderLoad"/>: Retry while at least this many connections are in their handshake…</summary>
    public int RetryHandshakingThreshold { get; init; } = 32;
    /// <summary>…or while at least this many connections were accepted in the current second.</summary>
    public int RetryRateThreshold { get; init; } = 64;
    /// <summary>How long a Retry token is good for.</summary>
    public TimeSpan RetryTokenLifetime { get; init; } = TimeSpan.FromSeconds(10);

    internal void ValidateLimits()
    {
        if (MaxConnections < 1 || MaxConnectionsPerSource < 1) throw new ArgumentException("connection limits must be at least 1");
        if (SourcePrefixV6 is < 1 or > 128) throw new ArgumentException("SourcePrefixV6 must be 1..128");
        if (RetryHandshakingThreshold < 0 || RetryRateThreshold < 0) throw new ArgumentException("Retry thresholds must not be negative");
        if (RetryTokenLifetime <= TimeSpan.Zero) throw new ArgumentException("RetryTokenLifetime must be positive");
    }
}

/// <summary>When a server answers an Initial with a Retry (RFC 9000 §8.1.2) instead of a handshake.</summary>
public enum QuicRetryPolicy
{
    /// <summary>Never: every acceptable Initial starts a handshake.</summary>
    Never,
    /// <summary>When <see cref="QuicServerOptions.RetryHandshakingThreshold"/> or <see cref="QuicServerOptions.RetryRateThreshold"/> is reached.</summary>
    UnderLoad,
    /// <summary>Every new connection.</summary>
    Always,
}
