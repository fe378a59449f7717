using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Tls;

namespace PtHost.Transports.Zephyr;

/// <summary>Client options (spec/zephyr.md §7.1).</summary>
internal sealed record ZephyrClientOptions(
    IReadOnlyList<Destination> Relays, byte[] ServerPin, X509Certificate2 Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout)
{
    public static ZephyrClientOptions Parse(JToken? options)
    {
        if (options is not JObject o) throw new TransportOptionsException("zephyr client options must be an object with \"relay\", \"serverPin\", \"certificate\" and \"key\"");
        var reader = new ZephyrOptionReader(o, "client", ["relay", "relays", "serverPin", "certificate", "key", "pkcs12", "signalTimeout", "tlsTimeout"]);
        var relays = reader.Relays() ?? throw new TransportOptionsException("zephyr client option \"relay\" (or \"relays\") is required");
        byte[] pin = PinnedTlsOptions.ReadServerPin(o, "zephyr");
        var cert = PinnedTlsOptions.ReadCertificate(o, "zephyr", "client", allowPkcs12: true) ?? throw new TransportOptionsException("zephyr client options need \"certificate\" and \"key\" (PEM) or \"pkcs12\"");
        return new(relays, pin, cert, reader.Seconds("signalTimeout", ZephyrDefaults.SignalTimeout), reader.Seconds("tlsTimeout", ZephyrDefaults.TlsTimeout));
    }
}

/// <summary>
/// Server options (spec/zephyr.md §7.1). <see cref="Certificate"/> null: the state directory's.
/// <see cref="Relays"/> null with <see cref="AnyRelay"/> false: the server cannot serve (it joins
/// only relays it was told about, unless told to join any).
/// </summary>
internal sealed record ZephyrServerOptions(
    IReadOnlyList<Destination>? Relays, IReadOnlyList<byte[]> ClientPins, X509Certificate2? Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout,
    bool AnyRelay = false)
{
    public static ZephyrServerOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new(null, [], null, ZephyrDefaults.SignalTimeout, ZephyrDefaults.TlsTimeout);
        if (options is not JObject o) throw new TransportOptionsException("zephyr server options must be an object");
        var reader = new ZephyrOptionReader(o, "server", ["relay", "relays", "anyRelay", "clientPins", "certificate", "key", "pkcs12", "signalTimeout", "tlsTimeout"]);
        bool anyRelay = o["anyRelay"] switch
        {
            null => false,
            { Type: JTokenType.Boolean } b => (bool)b!,
            _ => throw new TransportOptionsException("zephyr option \"anyRelay\" must be true or false"),
        };
        var relays = reader.Relays();
        if (anyRelay && relays is not null) throw new TransportOptionsException("zephyr option \"anyRelay\": true excludes \"relay\" and \"relays\"");
        var pins = PinnedTlsOptions.ReadClientPins(o, "zephyr");
        return new(relays, pins, PinnedTlsOptions.ReadCertificate(o, "zephyr", "server", allowPkcs12: true), reader.Seconds("signalTimeout", ZephyrDefaults.SignalTimeout), reader.Seconds("tlsTimeout", ZephyrDefaults.TlsTimeout), anyRelay);
    }
}

internal static class ZephyrDefaults
{
    public static readonly TimeSpan SignalTimeout = TimeSpan.FromSeconds(20);
    public static readonly TimeSpan TlsTimeout = TimeSpan.FromSeconds(10);
    /// <summary>The relay's default peer timeout (§4.3): how long a server waits for its client to bind.</summary>
    public static readonly TimeSpan RelayPeerTimeout = TimeSpan.FromSeconds(30);
}

internal sealed class ZephyrOptionReader
{
    private readonly JObject _o;

    public ZephyrOptionReader(JObject o, string side, string[] known)
    {
        _o = o;
        foreach (var p in o.Properties())
            if (!known.Contains(p.Name, StringComparer.Ordinal))
                throw new TransportOptionsException($"zephyr has no {side} option \"{p.Name}\" (known: {string.Join(", ", known)})");
    }

    public string? String(string name) => _o[name] switch
    {
        null => null,
        { Type: JTokenType.String } v => (string)v!,
        _ => throw new TransportOptionsException($"zephyr option \"{name}\" must be a string"),
    };

    public TimeSpan Seconds(string name, TimeSpan fallback)
    {
        var v = _o[name];
        if (v is null) return fallback;
        if (v.Type is not (JTokenType.Integer or JTokenType.Float) || (double)v! is not (> 0 and <= 3600 and var s))
            throw new TransportOptionsException($"zephyr option \"{name}\" must be a number of seconds above 0, at most 3600");
        return TimeSpan.FromSeconds(s);
    }

    public IReadOnlyList<Destination>? Relays()
    {
        if (_o["relay"] is not null && _o["relays"] is not null) throw new TransportOptionsException("zephyr options \"relay\" and \"relays\" exclude each other");
        var list = new List<Destination>();
        if (String("relay") is { } one) list.Add(ParseRelay(one));
        else if (_o["relays"] is { } many)
        {
            if (many is not JArray a || a.Count == 0) throw new TransportOptionsException("zephyr option \"relays\" must be a non-empty array of \"host:port\"");
            foreach (var item in a)
                list.Add(item.Type == JTokenType.String ? ParseRelay((string)item!) : throw new TransportOptionsException("zephyr option \"relays\" must be a non-empty array of \"host:port\""));
        }
        else return null;
        return list;
    }

    private static Destination ParseRelay(string text) =>
        Destination.TryParse(text, out var d) && d.Port != 0 ? d : throw new TransportOptionsException($"zephyr relay \"{text}\" is not \"host:port\"");
}
