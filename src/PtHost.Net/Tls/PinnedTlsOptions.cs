using System.Security.Cryptography.X509Certificates;
using PtHost.Contract;

namespace PtHost.Net.Tls;

/// <summary>
/// The pinned-TLS options a transport's <c>options</c> object carries (spec/zephyr.md §7.1, spec/jet.md
/// §7.1): <c>certificate</c> and <c>key</c> (PEM) or <c>pkcs12</c> (base64), <c>serverPin</c> on the
/// client, <c>clientPins</c> on the server. Read through the contract's <see cref="OptionsReader"/>, so
/// every error names the key by its path (<c>options.zephyr.serverPin: ...</c>).
/// </summary>
public static class PinnedTlsOptions
{
    private const string ServerPinProblem = "must be 64 hex digits (SHA-256 of the server certificate)";
    private const string ClientPinProblem = "must be 64 hex digits (SHA-256 of a client certificate)";

    /// <summary>
    /// The certificate with its key: <c>certificate</c> and <c>key</c> together, or (when
    /// <paramref name="allowPkcs12"/>) <c>pkcs12</c> alone; null when none is given.
    /// </summary>
    /// <param name="what">Who the certificate is for, in messages ("jet", "client", ...).</param>
    public static X509Certificate2? ReadCertificate(OptionsReader r, string what, bool allowPkcs12)
    {
        ArgumentNullException.ThrowIfNull(r);
        string? pem = r.String("certificate"), key = r.String("key");
        string? p12 = allowPkcs12 ? r.String("pkcs12") : null;
        try
        {
            if (p12 is not null)
            {
                if (pem is not null || key is not null) throw r.Fail("pkcs12", "excludes \"certificate\" and \"key\"");
                return PinnedTls.FromPkcs12(p12, what);
            }
            if (pem is null && key is null) return null;
            if (pem is null || key is null) throw r.Fail(pem is null ? "certificate" : "key", "goes together with \"" + (pem is null ? "key" : "certificate") + "\"");
            return PinnedTls.FromPem(pem, key, what);
        }
        catch (TransportOptionsException e)
        {
            throw r.Fail(p12 is not null ? "pkcs12" : "certificate", "unusable: " + (e.InnerException?.Message ?? e.Message), e);
        }
    }

    /// <summary>The client's required <c>serverPin</c>.</summary>
    public static byte[] ReadServerPin(OptionsReader r)
    {
        ArgumentNullException.ThrowIfNull(r);
        return r.Require("serverPin").Parse("serverPin", PinnedTls.ParsePin, ServerPinProblem)!;
    }

    /// <summary>The server's <c>clientPins</c>; empty when absent.</summary>
    public static IReadOnlyList<byte[]> ReadClientPins(OptionsReader r)
    {
        ArgumentNullException.ThrowIfNull(r);
        return r.List("clientPins", PinnedTls.ParsePin, ClientPinProblem) ?? [];
    }
}
