using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>Client options (spec/jet.md §7.1). <see cref="RelayPins"/>: per host, the relay certificate's pin; hosts not named: system CAs, SNI the host (§7.4).</summary>
internal sealed record JetClientOptions(byte[] ServerPin, X509Certificate2 Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout, IReadOnlyDictionary<string, byte[]> RelayPins)
{
    public static JetClientOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, JetOptions.Path);
        if (r.IsAbsent) throw r.Fail("is required: an object with \"serverPin\", \"certificate\" and \"key\" (pthost generate-config jet)");
        r.RejectUnknown("serverPin", "certificate", "key", "signalTimeout", "tlsTimeout", "relayPins");
        byte[] pin = PinnedTlsOptions.ReadServerPin(r);
        var cert = JetOptions.Certificate(r) ?? throw r.Fail("certificate", "is required with \"key\" (PEM)");
        return new(pin, cert, JetOptions.Seconds(r, "signalTimeout", JetDefaults.SignalTimeout), JetOptions.Seconds(r, "tlsTimeout", JetDefaults.TlsTimeout),
            JetOptions.RelayPins(r));
    }
}

/// <summary>
/// Server options (spec/jet.md §7.1). <see cref="Certificate"/> null: the state directory's. <see cref="RelayPins"/>: per host name,
/// the SHA-256 pin its relay certificate must have (hosts not named: system CAs, SNI the host). <see cref="CandidateHosts"/>: hosts
/// besides the relay's own that gathered candidates may name.
/// </summary>
internal sealed record JetServerOptions(
    IReadOnlyList<Uri> Relays, string? ApiKey, IReadOnlySet<string> Kinds, Destination? DirectAddress, IReadOnlyList<byte[]> ClientPins,
    X509Certificate2? Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout,
    IReadOnlyDictionary<string, byte[]> RelayPins, IReadOnlyList<string> CandidateHosts, bool DirectInterfaces)
{
    public static readonly string[] AllKinds = ["tcp", "tls", "ws", "wss", "direct", "direct-tls"];
    public static readonly string[] RelayKinds = ["tcp", "tls", "ws", "wss"];

    /// <summary>The plain direct candidate (tcp://) is offered.</summary>
    public bool DirectTcp => Kinds.Contains("direct");

    /// <summary>The TLS direct candidate (tls://, the server's own certificate) is offered.</summary>
    public bool DirectTls => Kinds.Contains("direct-tls");

    /// <summary>The server listens for direct candidates (either kind).</summary>
    public bool Direct => DirectTcp || DirectTls;

    public static JetServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, JetOptions.Path);
        r.RejectUnknown("relay", "relays", "apiKey", "kinds", "directAddress", "clientPins", "certificate", "key", "signalTimeout", "tlsTimeout", "relayPins", "candidateHosts", "directInterfaces");
        static Uri? RelayUrl(string t) => Uri.TryCreate(t, UriKind.Absolute, out var u) && u.Scheme is "http" or "https" && u.AbsolutePath == "/" && u.Query.Length == 0 ? u : null;
        var relay = r.Parse("relay", RelayUrl, "must be the relay's REST base URL, http(s)://host:port");
        var relays = r.List("relays", RelayUrl, "must be relay REST base URLs, http(s)://host:port", nonEmpty: true);
        if (relay is not null && relays is not null) throw r.Fail("relays", "goes without \"relay\" (list that relay here too)");
        IReadOnlyList<Uri> all = relays ?? (relay is null ? [] : [relay]);
        if (all.Count > 4) throw r.Fail("relays", "lists at most 4 relays (a client reads at most 16 candidates)");
        string? apiKey = r.String("apiKey");
        // §7.1: the key is a bearer secret; over http anyone on the path reads it.
        if (apiKey is not null && all.Any(u => u.Scheme != "https"))
            throw r.Fail("apiKey", "needs https relays: over http the key would travel in clear");
        var relayPins = JetOptions.RelayPins(r);
        var candidateHosts = r.List("candidateHosts", t => Destination.IsValidHostName(t) || Destination.ParseLiteral(t) is not null ? t : null, "must be host names or IP literals") ?? [];
        var kinds = r.List("kinds", t => AllKinds.Contains(t) ? t : null, "must be \"tcp\", \"tls\", \"ws\", \"wss\", \"direct\" or \"direct-tls\"", nonEmpty: true) ?? RelayKinds;
        var pins = PinnedTlsOptions.ReadClientPins(r);
        return new(all, apiKey, new HashSet<string>(kinds, StringComparer.Ordinal), r.Destination("directAddress"), pins, JetOptions.Certificate(r),
            JetOptions.Seconds(r, "signalTimeout", JetDefaults.SignalTimeout), JetOptions.Seconds(r, "tlsTimeout", JetDefaults.TlsTimeout), relayPins, candidateHosts, r.Bool("directInterfaces", false));
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

    /// <summary><c>relayPins</c> (§7.1): host name or IP → the SHA-256 pin of that relay's certificate; empty when absent.</summary>
    public static Dictionary<string, byte[]> RelayPins(OptionsReader r)
    {
        var pins = new Dictionary<string, byte[]>(StringComparer.OrdinalIgnoreCase);
        if (!r.Has("relayPins")) return pins;
        var po = r.Object("relayPins");
        if (po.IsAbsent) throw r.Fail("relayPins", "must be an object of host name → SHA-256 pin (64 hex digits)");
        foreach (string host in po.Keys)
            pins[host.Trim('[', ']')] = po.Parse(host, PinnedTls.ParsePin, "must be the SHA-256 pin (64 hex digits) of the relay's certificate") ?? throw po.Fail(host, "must be a pin");
        return pins;
    }

    /// <summary><c>certificate</c> and <c>key</c> (PEM); null when neither is given.</summary>
    public static X509Certificate2? Certificate(OptionsReader r) => PinnedTlsOptions.ReadCertificate(r, "jet", allowPkcs12: false);
}
