using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>Client options (spec/jet.md §7.1).</summary>
internal sealed record JetClientOptions(byte[] ServerPin, X509Certificate2 Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout)
{
    public static JetClientOptions Parse(JToken? options)
    {
        if (options is not JObject o) throw new TransportOptionsException("jet client options must be an object with \"serverPin\", \"certificate\" and \"key\" (pthost generate-config jet)");
        var r = new JetOptionReader(o, "client", ["serverPin", "certificate", "key", "signalTimeout", "tlsTimeout"]);
        byte[] pin = PinnedTlsOptions.ReadServerPin(o, "jet");
        var cert = PinnedTlsOptions.ReadCertificate(o, "jet", "client", allowPkcs12: false) ?? throw new TransportOptionsException("jet client options need \"certificate\" and \"key\" (PEM)");
        return new(pin, cert, r.Seconds("signalTimeout", JetDefaults.SignalTimeout), r.Seconds("tlsTimeout", JetDefaults.TlsTimeout));
    }
}

/// <summary>Server options (spec/jet.md §7.1). <see cref="Certificate"/> null: the state directory's.</summary>
internal sealed record JetServerOptions(
    Uri? Relay, string? ApiKey, IReadOnlySet<string> Kinds, Destination? DirectAddress, IReadOnlyList<byte[]> ClientPins,
    X509Certificate2? Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout)
{
    public static readonly string[] AllKinds = ["tcp", "tls", "ws", "wss", "direct"];
    public static readonly string[] RelayKinds = ["tcp", "tls", "ws", "wss"];

    public bool Direct => Kinds.Contains("direct");

    public static JetServerOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null)
            return new(null, null, new HashSet<string>(RelayKinds), null, [], null, JetDefaults.SignalTimeout, JetDefaults.TlsTimeout);
        if (options is not JObject o) throw new TransportOptionsException("jet server options must be an object");
        var r = new JetOptionReader(o, "server", ["relay", "apiKey", "kinds", "directAddress", "clientPins", "certificate", "key", "signalTimeout", "tlsTimeout"]);
        Uri? relay = null;
        if (r.String("relay") is { } relayText)
        {
            if (!Uri.TryCreate(relayText, UriKind.Absolute, out relay) || relay.Scheme is not ("http" or "https") || relay.AbsolutePath != "/" || relay.Query.Length > 0)
                throw new TransportOptionsException($"jet option \"relay\" \"{relayText}\" must be the relay's REST base URL, http(s)://host:port");
        }
        var kinds = new HashSet<string>(RelayKinds, StringComparer.Ordinal);
        if (o["kinds"] is { } k)
        {
            if (k is not JArray a || a.Count == 0 || a.Any(t => t.Type != JTokenType.String || !AllKinds.Contains((string)t!)))
                throw new TransportOptionsException("jet option \"kinds\" must be a non-empty array of \"tcp\", \"tls\", \"ws\", \"wss\", \"direct\"");
            kinds = new HashSet<string>(a.Select(t => (string)t!), StringComparer.Ordinal);
        }
        Destination? direct = null;
        if (r.String("directAddress") is { } d)
            direct = Destination.TryParse(d, out var dd) && dd.Port != 0 ? dd : throw new TransportOptionsException($"jet option \"directAddress\" \"{d}\" is not \"host:port\"");
        var pins = PinnedTlsOptions.ReadClientPins(o, "jet");
        return new(relay, r.String("apiKey"), kinds, direct, pins, PinnedTlsOptions.ReadCertificate(o, "jet", "server", allowPkcs12: false), r.Seconds("signalTimeout", JetDefaults.SignalTimeout), r.Seconds("tlsTimeout", JetDefaults.TlsTimeout));
    }
}

internal static class JetDefaults
{
    public static readonly TimeSpan SignalTimeout = TimeSpan.FromSeconds(20);
    public static readonly TimeSpan TlsTimeout = TimeSpan.FromSeconds(10);
}

internal sealed class JetOptionReader
{
    private readonly JObject _o;

    public JetOptionReader(JObject o, string side, string[] known)
    {
        _o = o;
        foreach (var p in o.Properties())
            if (!known.Contains(p.Name, StringComparer.Ordinal))
                throw new TransportOptionsException($"jet has no {side} option \"{p.Name}\" (known: {string.Join(", ", known)})");
    }

    public string? String(string name) => _o[name] switch
    {
        null => null,
        { Type: JTokenType.String } v => (string)v!,
        _ => throw new TransportOptionsException($"jet option \"{name}\" must be a string"),
    };

    public TimeSpan Seconds(string name, TimeSpan fallback)
    {
        var v = _o[name];
        if (v is null) return fallback;
        if (v.Type is not (JTokenType.Integer or JTokenType.Float) || (double)v! is not (> 0 and <= 3600 and var s))
            throw new TransportOptionsException($"jet option \"{name}\" must be a number of seconds above 0, at most 3600");
        return TimeSpan.FromSeconds(s);
    }
}
