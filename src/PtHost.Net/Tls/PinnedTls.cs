using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Net.Tls;

/// <summary>
/// Mutually authenticated TLS 1.3 between two PtHost processes with pinned self-signed certificates
/// (spec/zephyr.md §7.4, spec/jet.md §7.4): ECDSA P-256 certificates, each identified by the SHA-256 of
/// its DER encoding (the <i>pin</i>, 64 hex digits); the pin is the whole trust decision.
/// </summary>
public static class PinnedTls
{
    public const int PinLength = 32;

    /// <summary>Where a server keeps the certificate it made itself, in its state directory.</summary>
    public const string CertificateFile = "server-cert.pem", KeyFile = "server-key.pem";

    /// <summary>How long a generated certificate is valid.</summary>
    public static readonly TimeSpan Validity = TimeSpan.FromDays(3650);

    /// <summary>A fresh self-signed ECDSA P-256 certificate with its private key.</summary>
    public static X509Certificate2 Generate(string commonName)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        var now = DateTimeOffset.UtcNow;
        using var cert = request.CreateSelfSigned(now.AddDays(-1), now + Validity);
        // A PKCS#12 round trip gives a certificate whose key SslStream can use on every platform.
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>The certificate as PEM.</summary>
    public static string CertificatePem(X509Certificate2 cert)
    {
        ArgumentNullException.ThrowIfNull(cert);
        return cert.ExportCertificatePem();
    }

    /// <summary>The private key as PKCS#8 PEM.</summary>
    public static string KeyPem(X509Certificate2 cert)
    {
        ArgumentNullException.ThrowIfNull(cert);
        return (cert.GetECDsaPrivateKey() ?? throw new InvalidOperationException("certificate has no ECDSA private key")).ExportPkcs8PrivateKeyPem();
    }

    /// <summary>Loads a certificate and its key from PEM; throws <see cref="TransportOptionsException"/> naming <paramref name="what"/>.</summary>
    public static X509Certificate2 FromPem(string certificatePem, string keyPem, string what)
    {
        try
        {
            using var cert = X509Certificate2.CreateFromPem(certificatePem, keyPem);
            return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new TransportOptionsException($"{what}: certificate/key PEM unusable: {e.Message}", e);
        }
    }

    /// <summary>Loads a certificate with its key from base64 PKCS#12 (no password); throws <see cref="TransportOptionsException"/> naming <paramref name="what"/>.</summary>
    public static X509Certificate2 FromPkcs12(string base64, string what)
    {
        try
        {
            var cert = X509CertificateLoader.LoadPkcs12(Convert.FromBase64String(base64), null);
            if (!cert.HasPrivateKey) throw new TransportOptionsException($"{what}: the PKCS#12 holds no private key");
            return cert;
        }
        catch (Exception e) when (e is CryptographicException or FormatException)
        {
            throw new TransportOptionsException($"{what}: PKCS#12 unusable: {e.Message}", e);
        }
    }

    /// <summary>The pin of a certificate: SHA-256 of its DER encoding.</summary>
    public static byte[] Pin(X509Certificate cert)
    {
        ArgumentNullException.ThrowIfNull(cert);
        return SHA256.HashData(cert.GetRawCertData());
    }

    /// <summary>A pin as written in options: 64 lowercase hex digits.</summary>
    public static string FormatPin(ReadOnlySpan<byte> pin) => Convert.ToHexStringLower(pin);

    /// <summary>Parses 64 hex digits (either case; colons between bytes allowed). Returns null when malformed.</summary>
    public static byte[]? ParsePin(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string hex = text.Replace(":", "", StringComparison.Ordinal);
        if (hex.Length != PinLength * 2) return null;
        try { return Convert.FromHexString(hex); }
        catch (FormatException) { return null; }
    }

    /// <summary>
    /// True when <paramref name="cert"/>'s pin is one of <paramref name="allowed"/>. Every allowed pin
    /// is compared, each in constant time (<see cref="CryptographicOperations.FixedTimeEquals"/>).
    /// </summary>
    public static bool Matches(X509Certificate? cert, IReadOnlyList<byte[]> allowed)
    {
        ArgumentNullException.ThrowIfNull(allowed);
        if (cert is null || allowed.Count == 0) return false;
        byte[] pin = Pin(cert);
        bool found = false;
        foreach (var a in allowed) found |= CryptographicOperations.FixedTimeEquals(pin, a);
        return found;
    }

    /// <summary>The client's side: TLS 1.3, our certificate, the server accepted only by its pin.</summary>
    public static SslClientAuthenticationOptions ClientOptions(X509Certificate2 own, byte[] serverPin) =>
        ClientOptions(SslStreamCertificateContext.Create(own, null, offline: true), serverPin);

    /// <summary>As <see cref="ClientOptions(X509Certificate2, byte[])"/> with a prepared certificate context (one per factory, not per session).</summary>
    public static SslClientAuthenticationOptions ClientOptions(SslStreamCertificateContext own, byte[] serverPin)
    {
        var pins = new[] { serverPin };
        return new SslClientAuthenticationOptions
        {
            TargetHost = "",
            EnabledSslProtocols = SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            ClientCertificateContext = own,
            CertificateChainPolicy = PinOnlyChainPolicy(),
            // The pin is the whole trust decision: chain and name errors of a self-signed certificate are expected.
            RemoteCertificateValidationCallback = (_, cert, _, _) => Matches(cert, pins),
        };
    }

    /// <summary>
    /// The chain .NET builds before the validation callback, with no store behind it: the pin is the whole
    /// trust decision, so the system's roots are neither loaded nor searched (with the default policy each
    /// handshake's chain build sorted and compared the system store's names: most of a pinned handshake's
    /// libcrypto time, docs/benchmarks.md "Pinned TLS handshakes"). No downloads, no revocation.
    /// </summary>
    public static X509ChainPolicy PinOnlyChainPolicy() => new()
    {
        TrustMode = X509ChainTrustMode.CustomRootTrust,
        RevocationMode = X509RevocationMode.NoCheck,
        DisableCertificateDownloads = true,
    };

    /// <summary>The server's side: TLS 1.3, our certificate, a client certificate required and accepted only by its pin.</summary>
    public static SslServerAuthenticationOptions ServerOptions(X509Certificate2 own, IReadOnlyList<byte[]> clientPins) =>
        ServerOptions(SslStreamCertificateContext.Create(own, null, offline: true), clientPins);

    /// <summary>As <see cref="ServerOptions(X509Certificate2, IReadOnlyList{byte[]})"/> with a prepared certificate context.</summary>
    public static SslServerAuthenticationOptions ServerOptions(SslStreamCertificateContext own, IReadOnlyList<byte[]> clientPins) => new()
    {
        EnabledSslProtocols = SslProtocols.Tls13,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        ServerCertificateContext = own,
        ClientCertificateRequired = true,
        CertificateChainPolicy = PinOnlyChainPolicy(),
        RemoteCertificateValidationCallback = (_, cert, _, _) => Matches(cert, clientPins),
    };

    /// <summary>
    /// <c>pthost generate-config</c> for a pinned-TLS transport: a fresh server and client certificate,
    /// each side pinning the other (<c>serverPin</c>, <c>clientPins</c>; <c>certificate</c> and <c>key</c> as PEM).
    /// </summary>
    public static GeneratedConfiguration GenerateConfiguration(string transport)
    {
        using var server = Generate($"{transport} server");
        using var client = Generate($"{transport} client");
        var clientOptions = new JObject
        {
            ["serverPin"] = FormatPin(Pin(server)),
            ["certificate"] = CertificatePem(client),
            ["key"] = KeyPem(client),
        };
        var serverOptions = new JObject
        {
            ["certificate"] = CertificatePem(server),
            ["key"] = KeyPem(server),
            ["clientPins"] = new JArray(FormatPin(Pin(client))),
        };
        return new(clientOptions, serverOptions);
    }

    /// <summary>
    /// The server certificate kept in <paramref name="stateDirectory"/> (<see cref="CertificateFile"/>,
    /// <see cref="KeyFile"/> with mode 0600), created on first use.
    /// </summary>
    public static X509Certificate2 LoadOrCreateServerCertificate(string stateDirectory, string transport)
    {
        string certPath = Path.Combine(stateDirectory, CertificateFile), keyPath = Path.Combine(stateDirectory, KeyFile);
        if (File.Exists(certPath) && File.Exists(keyPath))
            return FromPem(File.ReadAllText(certPath), PrivateFile.ReadAllText(keyPath), $"{transport} server (state directory {stateDirectory})");
        using var cert = Generate($"{transport} server");
        Directory.CreateDirectory(stateDirectory);
        // Both new, never through a link (PrivateFile): a key or link left alone at either path is an error to resolve by hand.
        PrivateFile.WriteNew(keyPath, KeyPem(cert));
        PrivateFile.WriteNew(certPath, CertificatePem(cert));
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
    }
}
