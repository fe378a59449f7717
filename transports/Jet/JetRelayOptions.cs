using System.Net;
using System.Security.Cryptography.X509Certificates;
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

    /// <summary>
    /// The name in the <c>Jet-Instance</c> header and accept responses, and the self-signed certificate's
    /// subject: random per start unless configured (spec/jet.md §5.1), never the machine's host name.
    /// </summary>
    public string Instance { get; init; } = RandomInstance();

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

    /// <summary>Associations held at once that one source created (REST, v1 accept, policy any); one more answers 429.</summary>
    public int MaxAssociationsPerSource { get; init; } = 1_000;

    /// <summary>The prefix length under which IPv6 sources count as one for the per-source limits (IPv4: the address).</summary>
    public int Ipv6SourcePrefix { get; init; } = 64;

    /// <summary>A relayed session with no byte in either direction for this long is closed.</summary>
    public TimeSpan SessionIdleTimeout { get; init; } = TimeSpan.FromSeconds(900);

    /// <summary>A relayed session is closed this long after it was paired, busy or not.</summary>
    public TimeSpan SessionLifetime { get; init; } = TimeSpan.FromHours(24);

    /// <summary>
    /// Whether a v2 acceptor gets its 200 (the seed, §4); false: none, as this relay did before (for jet servers of
    /// earlier builds, which took any JET packet on an accepted candidate for a refusal).
    /// </summary>
    public bool AnswerV2Accept { get; init; } = true;

    /// <summary>Interval of the stats log line.</summary>
    public TimeSpan StatsInterval { get; init; } = TimeSpan.FromSeconds(60);

    private static readonly string[] Known =
        ["listen", "tcp", "tls", "wss", "certificateFile", "keyFile", "instance", "externalHost", "external", "apiKey", "policy",
         "associationTimeout", "handshakeTimeout", "maxConnections", "maxPerSource", "maxAssociations", "statsInterval",
         "maxAssociationsPerSource", "ipv6SourcePrefix", "sessionIdleTimeout", "sessionLifetime", "answerV2Accept"];

    /// <summary>"jet-" and 16 random hex digits (spec/jet.md §5.1).</summary>
    public static string RandomInstance() => "jet-" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));

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

    /// <summary>
    /// Reads the configuration file (JSON, spec/jet.md §5.1) over <paramref name="defaults"/>. Throws
    /// <see cref="OptionsException"/> naming the key (<c>(document)</c> for text that is not a JSON object).
    /// </summary>
    public static JetRelayOptions Parse(string json, JetRelayOptions defaults, string baseDirectory)
    {
        var o = OptionsReader.Parse(json);
        o.RejectUnknown(Known);

        var r = defaults;
        if (o.Has("listen"))
        {
            var ep = EndPoint(o, "listen") ?? throw o.Fail("listen", "cannot be false");
            // Listeners left at their defaults follow the new address (same IP, port 0).
            IPEndPoint? Follow(IPEndPoint? d) => d is not null && d.Address.Equals(defaults.Listen.Address) && d.Port == 0 ? new IPEndPoint(ep.Address, 0) : d;
            r = r with { Listen = ep, Tcp = Follow(r.Tcp), Tls = Follow(r.Tls), Wss = Follow(r.Wss) };
        }
        if (o.Has("tcp")) r = r with { Tcp = EndPoint(o, "tcp") };
        if (o.Has("tls")) r = r with { Tls = EndPoint(o, "tls") };
        if (o.Has("wss")) r = r with { Wss = EndPoint(o, "wss") };
        string? certFile = o.String("certificateFile"), keyFile = o.String("keyFile");
        if ((certFile is null) != (keyFile is null)) throw o.Fail(certFile is null ? "certificateFile" : "keyFile", "goes together with \"" + (certFile is null ? "keyFile" : "certificateFile") + "\"");
        if (certFile is not null)
        {
            // The key goes through the shared key-file rules (spec/ipc.md §3.7): a regular file of ours, mode 0600 or tighter.
            string keyPem;
            try { keyPem = PtHost.Net.PrivateFile.ReadAllText(Path.Combine(baseDirectory, keyFile!)); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw o.Fail("keyFile", "unusable: " + e.Message, e);
            }
            try
            {
                string certPem = File.ReadAllText(Path.Combine(baseDirectory, certFile));
                r = r with { Certificate = LoadPem(certPem, keyPem) };
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or TransportOptionsException)
            {
                throw o.Fail("certificateFile", "unusable: " + (e is TransportOptionsException ? e.InnerException?.Message ?? e.Message : e.Message), e);
            }
        }
        if (o.String("instance") is { } instance)
        {
            if (instance.Length is 0 or > 255 || instance.Any(c => c <= ' ' || c >= 0x7f)) throw o.Fail("instance", "must be 1–255 printable ASCII characters without spaces");
            r = r with { Instance = instance };
        }
        if (o.String("externalHost") is { } host)
        {
            if (!Destination.IsValidHostName(host) && Destination.ParseLiteral(host) is null) throw o.Fail("externalHost", $"\"{host}\" is not a host name or IP literal");
            r = r with { ExternalHost = host };
        }
        if (o.Has("external"))
        {
            var eo = o.Object("external");
            if (eo.IsAbsent) throw o.Fail("external", "must be an object of kind → \"host:port\"");
            var map = new Dictionary<CandidateKind, Destination>();
            foreach (string name in eo.Keys)
            {
                var kind = name switch
                {
                    "tcp" => CandidateKind.Tcp,
                    "tls" => CandidateKind.Tls,
                    "ws" => CandidateKind.Ws,
                    "wss" => CandidateKind.Wss,
                    _ => throw eo.Fail(name, "unknown kind (known: tcp, tls, ws, wss)"),
                };
                map[kind] = eo.Destination(name)!;
            }
            r = r with { External = map };
        }
        if (o.Has("apiKey"))
        {
            string? key = o.Token("apiKey")!.Type == JTokenType.Null ? null : o.String("apiKey");
            if (key is not null && (key.Length is < 16 or > 512 || key.Any(c => c <= ' ' || c >= 0x7f)))
                throw o.Fail("apiKey", "must be 16–512 printable ASCII characters without spaces");
            r = r with { ApiKey = key };
        }
        if (o.OneOf("policy", "api", "any") is { } policy) r = r with { Policy = policy == "api" ? AssociationPolicy.Api : AssociationPolicy.Any };
        return r with
        {
            AssociationTimeout = o.Seconds("associationTimeout", r.AssociationTimeout, 86_400),
            HandshakeTimeout = o.Seconds("handshakeTimeout", r.HandshakeTimeout, 86_400),
            StatsInterval = o.Seconds("statsInterval", r.StatsInterval, 86_400),
            MaxConnections = (int)o.Integer("maxConnections", r.MaxConnections, 1, 1_000_000),
            MaxPerSource = (int)o.Integer("maxPerSource", r.MaxPerSource, 1, 1_000_000),
            MaxAssociations = (int)o.Integer("maxAssociations", r.MaxAssociations, 1, 1_000_000),
            MaxAssociationsPerSource = (int)o.Integer("maxAssociationsPerSource", r.MaxAssociationsPerSource, 1, 1_000_000),
            Ipv6SourcePrefix = (int)o.Integer("ipv6SourcePrefix", r.Ipv6SourcePrefix, 32, 128),
            SessionIdleTimeout = o.Seconds("sessionIdleTimeout", r.SessionIdleTimeout, 604_800),
            SessionLifetime = o.Seconds("sessionLifetime", r.SessionLifetime, 31_536_000),
            AnswerV2Accept = o.Bool("answerV2Accept", r.AnswerV2Accept),
        };
    }

    internal static X509Certificate2 LoadPem(string certPem, string keyPem) => PinnedTls.FromPem(certPem, keyPem, "jet relay");

    /// <summary>"ip:port" (port 0: any free port), or false: the listener is off.</summary>
    private static IPEndPoint? EndPoint(OptionsReader o, string key) =>
        o.Token(key) is { Type: JTokenType.Boolean } b && !(bool)b ? null
        : o.Token(key) is { Type: not JTokenType.String } other ? throw o.Fail(key, $"must be \"ip:port\" (port 0: any free port) or false, not {OptionsReader.Describe(other)}")
        : o.EndPoint(key);
}
