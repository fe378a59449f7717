using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary>
/// Certificates and pins of the zephyr transport (spec/zephyr.md §7.4): self-signed ECDSA P-256
/// certificates, identified by the SHA-256 of their DER encoding (the <i>pin</i>, 64 hex digits).
/// </summary>
public static class ZephyrCredentials
{
    public const int PinLength = 32;

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
    public static string CertificatePem(X509Certificate2 cert) => cert.ExportCertificatePem();

    /// <summary>The private key as PKCS#8 PEM.</summary>
    public static string KeyPem(X509Certificate2 cert) =>
        (cert.GetECDsaPrivateKey() ?? throw new InvalidOperationException("certificate has no ECDSA private key")).ExportPkcs8PrivateKeyPem();

    /// <summary>Loads a certificate and its key from PEM; throws <see cref="TransportOptionsException"/>.</summary>
    public static X509Certificate2 FromPem(string certificatePem, string keyPem, string what)
    {
        try
        {
            using var cert = X509Certificate2.CreateFromPem(certificatePem, keyPem);
            return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new TransportOptionsException($"zephyr {what}: certificate/key PEM unusable: {e.Message}", e);
        }
    }

    /// <summary>Loads a certificate with its key from base64 PKCS#12 (no password); throws <see cref="TransportOptionsException"/>.</summary>
    public static X509Certificate2 FromPkcs12(string base64, string what)
    {
        try
        {
            var cert = X509CertificateLoader.LoadPkcs12(Convert.FromBase64String(base64), null);
            if (!cert.HasPrivateKey) throw new TransportOptionsException($"zephyr {what}: the PKCS#12 holds no private key");
            return cert;
        }
        catch (Exception e) when (e is CryptographicException or FormatException)
        {
            throw new TransportOptionsException($"zephyr {what}: PKCS#12 unusable: {e.Message}", e);
        }
    }

    /// <summary>The pin of a certificate: SHA-256 of its DER encoding.</summary>
    public static byte[] Pin(X509Certificate cert) => SHA256.HashData(cert.GetRawCertData());

    /// <summary>A pin as written in options: 64 lowercase hex digits.</summary>
    public static string FormatPin(ReadOnlySpan<byte> pin) => Convert.ToHexStringLower(pin);

    /// <summary>Parses 64 hex digits (either case; colons between bytes allowed). Returns null when malformed.</summary>
    public static byte[]? ParsePin(string text)
    {
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
        if (cert is null || allowed.Count == 0) return false;
        byte[] pin = Pin(cert);
        bool found = false;
        foreach (var a in allowed) found |= CryptographicOperations.FixedTimeEquals(pin, a);
        return found;
    }
}
