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
        var r = OptionsReader.For(options, JetOptions.Path);
        if (r.IsAbsent) throw r.Fail("is required: an object with \"serverPin\", \"certificate\" and \"key\" (pthost generate-config jet)");
        r.RejectUnknown("serverPin", "certificate", "key", "signalTimeout", "tlsTimeout");
        byte[] pin = PinnedTlsOptions.ReadServerPin(r);
        var cert = JetOptions.Certificate(r) ?? throw r.Fail("certificate", "is required with \"key\" (PEM)");
        return new(pin, cert, JetOptions.Seconds(r, "signalTimeout", JetDefaults.SignalTimeout), JetOptions.Seconds(r, "tlsTimeout", JetDefaults.TlsTimeout));
    }
}

/// <summary>
/// Server options (spec/jet.md §7.1). <see cref="Certificate"/> null: the state directory's. <see cref="RelayPins"/>: per host name,
/// the SHA-256 pin its relay certificate must have (hosts not named: system CAs, SNI the host). <see cref="CandidateHosts"/>: hosts
/// besides the relay's own that gathered candidates may name.
/// </summary>
internal sealed record JetServerOptions(
    Uri? Relay, string? ApiKey, IReadOnlySet<string> Kinds, Destination? DirectAddress, IReadOnlyList<byte[]> ClientPins,
    X509Certificate2? Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout,
    IReadOnlyDictionary<string, byte[]> RelayPins, IReadOnlyList<string> CandidateHosts)
{
    public static readonly string[] AllKinds = ["tcp", "tls", "ws", "wss", "direct"];
    public static readonly string[] RelayKinds = ["tcp", "tls", "ws", "wss"];

    public bool Direct => Kinds.Contains("direct");

    public static JetServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, JetOptions.Path);
        r.RejectUnknown("relay", "apiKey", "kinds", "directAddress", "clientPins", "certificate", "key", "signalTimeout", "tlsTimeout", "relayPins", "candidateHosts");
        var relay = r.Parse("relay", t => Uri.TryCreate(t, UriKind.Absolute, out var u) && u.Scheme is "http" or "https" && u.AbsolutePath == "/" && u.Query.Length == 0 ? u : null,
            "must be the relay's REST base URL, http(s)://host:port");
        string? apiKey = r.String("apiKey");
        // §7.1: the key is a bearer secret; over http anyone on the path reads it.
        if (apiKey is not null && relay is not null && relay.Scheme != "https")
            throw r.Fail("apiKey", "needs an https \"relay\": over http the key would travel in clear");
        var relayPins = new Dictionary<string, byte[]>(StringComparer.OrdinalIgnoreCase);
        if (r.Has("relayPins"))
        {
            var po = r.Object("relayPins");
            if (po.IsAbsent) throw r.Fail("relayPins", "must be an object of host name → SHA-256 pin (64 hex digits)");
            foreach (string host in po.Keys)
                relayPins[host] = po.Parse(host, PinnedTls.ParsePin, "must be the SHA-256 pin (64 hex digits) of the relay's certificate") ?? throw po.Fail(host, "must be a pin");
        }
        var candidateHosts = r.List("candidateHosts", t => Destination.IsValidHostName(t) || Destination.ParseLiteral(t) is not null ? t : null, "must be host names or IP literals") ?? [];
        var kinds = r.List("kinds", t => AllKinds.Contains(t) ? t : null, "must be \"tcp\", \"tls\", \"ws\", \"wss\" or \"direct\"", nonEmpty: true) ?? RelayKinds;
        var pins = PinnedTlsOptions.ReadClientPins(r);
        return new(relay, apiKey, new HashSet<string>(kinds, StringComparer.Ordinal), r.Destination("directAddress"), pins, JetOptions.Certificate(r),
            JetOptions.Seconds(r, "signalTimeout", JetDefaults.SignalTimeout), JetOptions.Seconds(r, "tlsTimeout", JetDefaults.TlsTimeout), relayPins, candidateHosts);
    }
}

internal static class JetDefaults
{
    public static readonly TimeSpan SignalTimeout = TimeSpan.FromSeconds(20);
    public static readonly TimeSpan TlsTimeout = TimeSpan.FromSeconds(10);
}

/// <summary>What both sides' options share (spec/jet.md §7.1).</summary>
internal static class JetOptions
{
    public const string Path = "options.jet";

    public static TimeSpan Seconds(OptionsReader r, string key, TimeSpan fallback) => r.Seconds(key, fallback, max: 3600);

    /// <summary><c>certificate</c> and <c>key</c> (PEM); null when neither is given.</summary>
    public static X509Certificate2? Certificate(OptionsReader r) => PinnedTlsOptions.ReadCertificate(r, "jet", allowPkcs12: false);
}
