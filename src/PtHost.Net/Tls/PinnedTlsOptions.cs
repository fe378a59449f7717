using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Net.Tls;

/// <summary>
/// The pinned-TLS options a transport's <c>options</c> object carries (spec/zephyr.md §7.1, spec/jet.md
/// §7.1): <c>certificate</c> and <c>key</c> (PEM) or <c>pkcs12</c> (base64), <c>serverPin</c> on the
/// client, <c>clientPins</c> on the server. Errors are <see cref="TransportOptionsException"/>s naming
/// the transport and the key.
/// </summary>
public static class PinnedTlsOptions
{
    /// <summary>
    /// The certificate with its key: <c>certificate</c> and <c>key</c> together, or (when
    /// <paramref name="allowPkcs12"/>) <c>pkcs12</c> alone; null when none is given.
    /// </summary>
    /// <param name="side">"client" or "server", for messages.</param>
    public static X509Certificate2? ReadCertificate(JObject options, string transport, string side, bool allowPkcs12)
    {
        ArgumentNullException.ThrowIfNull(options);
        string? pem = String(options, transport, "certificate"), key = String(options, transport, "key");
        string? p12 = allowPkcs12 ? String(options, transport, "pkcs12") : null;
        if (p12 is not null)
        {
            if (pem is not null || key is not null) throw new TransportOptionsException($"{transport} option \"pkcs12\" excludes \"certificate\" and \"key\"");
            return PinnedTls.FromPkcs12(p12, $"{transport} {side}");
        }
        if (pem is null && key is null) return null;
        if (pem is null || key is null) throw new TransportOptionsException($"{transport} options \"certificate\" and \"key\" go together");
        return PinnedTls.FromPem(pem, key, allowPkcs12 ? $"{transport} {side}" : transport);
    }

    /// <summary>The client's required <c>serverPin</c>.</summary>
    public static byte[] ReadServerPin(JObject options, string transport)
    {
        ArgumentNullException.ThrowIfNull(options);
        string text = String(options, transport, "serverPin") ?? throw new TransportOptionsException($"{transport} client option \"serverPin\" is required");
        return PinnedTls.ParsePin(text) ?? throw new TransportOptionsException($"{transport} option \"serverPin\" must be 64 hex digits (SHA-256 of the server certificate)");
    }

    /// <summary>The server's <c>clientPins</c>; empty when absent.</summary>
    public static IReadOnlyList<byte[]> ReadClientPins(JObject options, string transport)
    {
        ArgumentNullException.ThrowIfNull(options);
        var pins = new List<byte[]>();
        if (options["clientPins"] is not { } p) return pins;
        if (p is not JArray a) throw new TransportOptionsException($"{transport} option \"clientPins\" must be an array of pins");
        foreach (var item in a)
        {
            if (item.Type != JTokenType.String || PinnedTls.ParsePin((string)item!) is not { } pin)
                throw new TransportOptionsException($"{transport} option \"clientPins\": each pin must be 64 hex digits (SHA-256 of a client certificate)");
            pins.Add(pin);
        }
        return pins;
    }

    private static string? String(JObject o, string transport, string name) => o[name] switch
    {
        null => null,
        { Type: JTokenType.String } v => (string)v!,
        _ => throw new TransportOptionsException($"{transport} option \"{name}\" must be a string"),
    };
}
