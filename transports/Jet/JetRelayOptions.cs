using System.Net;
using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>The four candidate kinds (spec/jet.md §5.3): the URL scheme a candidate carries.</summary>
public enum CandidateKind
{
    Tcp,
    Tls,
    Ws,
    Wss,
}

/// <summary>Who may name an association (spec/jet.md §5.5).</summary>
public enum AssociationPolicy
{
    /// <summary>Only associations created through <c>POST /jet/association/{id}</c> (and v1 accepts) exist.</summary>
    Api,
    /// <summary>An accept naming an unknown association and candidate creates both.</summary>
    Any,
}

/// <summary>Settings of the JET relay service (spec/jet.md §5.1): the command line's <c>--listen</c> plus the configuration file.</summary>
public sealed record JetRelayOptions
{
    public const int DefaultPort = 8080;

    /// <summary>The HTTP listener: REST API and ws:// WebSocket accept/connect.</summary>
    public IPEndPoint Listen { get; init; } = new(IPAddress.Loopback, DefaultPort);

    /// <summary>Raw TCP binary protocol listener (tcp:// candidates); null: none. Port 0 picks a free port.</summary>
    public IPEndPoint? Tcp { get; init; }

    /// <summary>TLS binary protocol listener (tls:// candidates); null: none.</summary>
    public IPEndPoint? Tls { get; init; }

    /// <summary>HTTPS listener: the REST API and wss:// WebSocket accept/connect; null: none.</summary>
    public IPEndPoint? Wss { get; init; }

    /// <summary>The certificate of the tls and wss listeners; null: a self-signed one made at start-up.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>The name in the <c>Jet-Instance</c> header and v1 accept responses.</summary>
    public string Instance { get; init; } = Environment.MachineName;

    /// <summary>The host name candidate URLs carry; null: each listener's own address (loopback for a wildcard).</summary>
    public string? ExternalHost { get; init; }

    /// <summary>Per-kind external host:port overriding <see cref="ExternalHost"/> and the bound port (a port forward, a load balancer).</summary>
    public IReadOnlyDictionary<CandidateKind, Destination> External { get; init; } = new Dictionary<CandidateKind, Destination>();

    /// <summary>The bearer key the REST API requires; null: open.</summary>
    public string? ApiKey { get; init; }

    public AssociationPolicy Policy { get; init; } = AssociationPolicy.Api;

    /// <summary>An association with no waiting or relayed connection is removed after this long unused; a waiting acceptor is cut after it too.</summary>
    public TimeSpan AssociationTimeout { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>Time to receive the whole JET packet (and the TLS handshake before it); slower clients get 408 and a close.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Binary and WebSocket connections held at once; further ones are closed at once (503 on WebSocket).</summary>
    public int MaxConnections { get; init; } = 10_000;

    /// <summary>Binary and WebSocket connections held at once from one source address.</summary>
    public int MaxPerSource { get; init; } = 1_000;

    /// <summary>Associations held at once; creating one more answers 503.</summary>
    public int MaxAssociations { get; init; } = 10_000;

    /// <summary>Interval of the stats log line.</summary>
    public TimeSpan StatsInterval { get; init; } = TimeSpan.FromSeconds(60);

    private static readonly string[] Known =
        ["listen", "tcp", "tls", "wss", "certificateFile", "keyFile", "instance", "externalHost", "external", "apiKey", "policy",
         "associationTimeout", "handshakeTimeout", "maxConnections", "maxPerSource", "maxAssociations", "statsInterval"];

    /// <summary>
    /// The defaults for <c>--listen</c> alone: tcp, tls and wss listeners on the same address with
    /// ports chosen by the system, and a self-signed certificate (spec/jet.md §5.1).
    /// </summary>
    public static JetRelayOptions ForListen(IPEndPoint listen) => new()
    {
        Listen = listen,
        Tcp = new IPEndPoint(listen.Address, 0),
        Tls = new IPEndPoint(listen.Address, 0),
        Wss = new IPEndPoint(listen.Address, 0),
    };

    /// <summary>Reads the configuration file (JSON, spec/jet.md §5.1) over <paramref name="defaults"/>. Throws <see cref="FormatException"/>.</summary>
    public static JetRelayOptions Parse(string json, JetRelayOptions defaults, string baseDirectory)
    {
        JObject o;
        try
        {
            using var reader = new JsonTextReader(new StringReader(json)) { DateParseHandling = DateParseHandling.None };
            o = JObject.Load(reader);
        }
        catch (JsonException e) { throw new FormatException($"not a JSON object: {e.Message}"); }
        foreach (var p in o.Properties())
            if (!Known.Contains(p.Name, StringComparer.Ordinal)) throw new FormatException($"unknown key \"{p.Name}\" (known: {string.Join(", ", Known)})");

        var r = defaults;
        if (o["listen"] is { } listen)
        {
            var ep = EndPoint(listen, "listen") ?? throw new FormatException("\"listen\" cannot be false");
            // Listeners left at their defaults follow the new address (same IP, port 0).
            IPEndPoint? Follow(IPEndPoint? d) => d is not null && d.Address.Equals(defaults.Listen.Address) && d.Port == 0 ? new IPEndPoint(ep.Address, 0) : d;
            r = r with { Listen = ep, Tcp = Follow(r.Tcp), Tls = Follow(r.Tls), Wss = Follow(r.Wss) };
        }
        if (o.ContainsKey("tcp")) r = r with { Tcp = EndPoint(o["tcp"]!, "tcp") };
        if (o.ContainsKey("tls")) r = r with { Tls = EndPoint(o["tls"]!, "tls") };
        if (o.ContainsKey("wss")) r = r with { Wss = EndPoint(o["wss"]!, "wss") };
        string? certFile = Str(o, "certificateFile"), keyFile = Str(o, "keyFile");
        if ((certFile is null) != (keyFile is null)) throw new FormatException("\"certificateFile\" and \"keyFile\" go together");
        if (certFile is not null)
        {
            try
            {
                string certPem = File.ReadAllText(Path.Combine(baseDirectory, certFile)), keyPem = File.ReadAllText(Path.Combine(baseDirectory, keyFile!));
                r = r with { Certificate = LoadPem(certPem, keyPem) };
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or TransportOptionsException)
            {
                throw new FormatException($"certificate: {(e is TransportOptionsException ? e.InnerException?.Message ?? e.Message : e.Message)}");
            }
        }
        if (Str(o, "instance") is { } instance)
        {
            if (instance.Length is 0 or > 255 || instance.Any(c => c <= ' ' || c >= 0x7f)) throw new FormatException("\"instance\" must be 1–255 printable ASCII characters without spaces");
            r = r with { Instance = instance };
        }
        if (Str(o, "externalHost") is { } host)
        {
            if (!Destination.IsValidHostName(host) && Destination.ParseLiteral(host) is null) throw new FormatException($"\"externalHost\" \"{host}\" is not a host name or IP literal");
            r = r with { ExternalHost = host };
        }
        if (o["external"] is { } ext)
        {
            if (ext is not JObject eo) throw new FormatException("\"external\" must be an object of kind → \"host:port\"");
            var map = new Dictionary<CandidateKind, Destination>();
            foreach (var p in eo.Properties())
            {
                if (!Enum.TryParse<CandidateKind>(p.Name, ignoreCase: true, out var kind) || p.Name != p.Name.ToLowerInvariant())
                    throw new FormatException($"\"external\": \"{p.Name}\" is not one of tcp, tls, ws, wss");
                if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out var d) || d.Port == 0)
                    throw new FormatException($"\"external\".{p.Name} must be \"host:port\"");
                map[kind] = d;
            }
            r = r with { External = map };
        }
        if (o.ContainsKey("apiKey"))
        {
            string? key = o["apiKey"]!.Type == JTokenType.Null ? null : Str(o, "apiKey");
            if (key is not null && (key.Length is < 16 or > 512 || key.Any(c => c <= ' ' || c >= 0x7f)))
                throw new FormatException("\"apiKey\" must be 16–512 printable ASCII characters without spaces");
            r = r with { ApiKey = key };
        }
        if (Str(o, "policy") is { } policy)
            r = r with { Policy = policy switch { "api" => AssociationPolicy.Api, "any" => AssociationPolicy.Any, _ => throw new FormatException("\"policy\" must be \"api\" or \"any\"") } };
        if (o["associationTimeout"] is { } at) r = r with { AssociationTimeout = Seconds(at, "associationTimeout") };
        if (o["handshakeTimeout"] is { } ht) r = r with { HandshakeTimeout = Seconds(ht, "handshakeTimeout") };
        if (o["statsInterval"] is { } si) r = r with { StatsInterval = Seconds(si, "statsInterval") };
        if (o["maxConnections"] is { } mc) r = r with { MaxConnections = Count(mc, "maxConnections") };
        if (o["maxPerSource"] is { } mp) r = r with { MaxPerSource = Count(mp, "maxPerSource") };
        if (o["maxAssociations"] is { } ma) r = r with { MaxAssociations = Count(ma, "maxAssociations") };
        return r;
    }

    internal static X509Certificate2 LoadPem(string certPem, string keyPem) => PinnedTls.FromPem(certPem, keyPem, "jet relay");

    private static string? Str(JObject o, string name) => o[name] switch
    {
        null => null,
        { Type: JTokenType.String } v => (string)v!,
        _ => throw new FormatException($"\"{name}\" must be a string"),
    };

    private static IPEndPoint? EndPoint(JToken v, string name)
    {
        if (v.Type == JTokenType.Boolean && !(bool)v) return null;
        if (v.Type != JTokenType.String || !Destination.TryParse((string)v!, out var d) || d.Address is null)
            throw new FormatException($"\"{name}\" must be \"ip:port\" (port 0: any free port) or false");
        return new IPEndPoint(d.Address, d.Port);
    }

    private static TimeSpan Seconds(JToken v, string name) =>
        v.Type is JTokenType.Integer or JTokenType.Float && (double)v! is > 0 and <= 86_400 and var s
            ? TimeSpan.FromSeconds(s)
            : throw new FormatException($"\"{name}\" must be a number of seconds above 0, at most 86400");

    private static int Count(JToken v, string name) =>
        v.Type == JTokenType.Integer && (long)v! is > 0 and <= 1_000_000 and var n
            ? (int)n
            : throw new FormatException($"\"{name}\" must be an integer 1–1000000");
}
