using System.Net;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Configuration;

/// <summary>The process role (spec/ipc.md §3).</summary>
public enum Role { Client, Server }

/// <summary>
/// How a client process's front end takes traffic (spec/ipc.md §3.2 <c>mode</c>, §12): SOCKS5, or one of the
/// shapeshifter-dispatcher's transparent modes that send everything to one server.
/// </summary>
public enum ClientMode { Socks5, TransparentTcp, TransparentUdp, Stun }

/// <summary>A configuration error: names the key; exit 78 (EX_CONFIG).</summary>
public sealed class ConfigException(string key, string problem) : Exception($"config key '{key}': {problem}")
{
    public string Key { get; } = key;
}

/// <summary>The PT 2.0 JSON configuration, validated (spec/ipc.md §3). Unknown keys are errors.</summary>
public sealed partial class PtConfig
{
    public static readonly string[] Keys =
    [
        "ptversion", "role", "transports", "proxylistenaddr", "bindaddr", "target", "options", "allow",
        "plugindir", "state", "exit-on-stdin-close", "loglevel", "unsafe-logging", "proxy", "turn", "public-frontends", "mode",
        "metrics", "instance", // spec/ipc.md §4.12
        "signals", // spec/rendezvous.md §7.1
    ];

    public string PtVersion { get; private init; } = "2";
    public Role Role { get; private init; }
    public IReadOnlyList<string> Transports { get; private init; } = [];
    public IReadOnlyDictionary<string, IPEndPoint> ProxyListenAddresses { get; private init; } = new Dictionary<string, IPEndPoint>();
    public IReadOnlyDictionary<string, IPEndPoint> BindAddresses { get; private init; } = new Dictionary<string, IPEndPoint>();
    /// <summary>Server: the bound target (§3.6). Client in a transparent mode: the PT server every session goes to (§12.2).</summary>
    public Destination? Target { get; private init; }
    /// <summary><c>mode</c> (spec/ipc.md §3.2, §12): the client's front end; a server serves every mode alike.</summary>
    public ClientMode Mode { get; private init; }
    /// <summary>The version the <c>VERSION</c> line announces: "2", or "3.0" when the dispatcher command line asked for it (§12.1).</summary>
    public string AnnouncedVersion { get; private init; } = "2";
    public IReadOnlyDictionary<string, JToken> Options { get; private init; } = new Dictionary<string, JToken>();
    public AllowList? Allow { get; private init; }
    /// <summary>The TURN front end (client role; spec/turn.md §2); null for none.</summary>
    public PtHost.Turn.TurnOptions? Turn { get; private init; }
    public string? PluginDirectory { get; private init; }
    /// <summary><c>public-frontends</c>: SOCKS5 and TURN listeners may have a non-loopback address (spec/ipc.md §3.2).</summary>
    public bool PublicFrontEnds { get; private init; }
    public string StateDirectory { get; private init; } = Directory.GetCurrentDirectory();
    public bool ExitOnStdinClose { get; private init; }
    public Microsoft.Extensions.Logging.LogLevel LogLevel { get; private init; } = Microsoft.Extensions.Logging.LogLevel.Information;
    /// <summary><c>unsafe-logging</c>: logs keep the addresses of clients, peers and destinations (spec/ipc.md §4.11).</summary>
    public bool UnsafeLogging { get; private init; }
    /// <summary><c>metrics</c>: where the Prometheus endpoint listens (spec/ipc.md §4.12); null: off.</summary>
    public IPEndPoint? Metrics { get; private init; }
    /// <summary>
    /// <c>instance</c>: the id in <c>pthost_instance_info</c> (spec/ipc.md §4.12). The default's 64 bits are a label,
    /// not a secret: Random.Shared, since RandomNumberGenerator would load OpenSSL while the configuration is read
    /// (6.7 MB more RSS at CMETHODS DONE and a slower start for a plain process, docs/benchmarks.md).
    /// </summary>
    public string Instance { get; private set; } = NewInstanceId();

    private static string NewInstanceId()
    {
        Span<byte> id = stackalloc byte[8];
        Random.Shared.NextBytes(id);
        return "pthost-" + Convert.ToHexStringLower(id);
    }

    /// <summary>
    /// Transports whose signals go through a rendezvous instead of CMESSAGE/SMESSAGE lines (spec/rendezvous.md §7):
    /// every transport with <c>"signals"</c> (PT 2.0), or the server transports whose TOR_PT_SERVER_TRANSPORT_OPTIONS name one (PT 1.0).
    /// </summary>
    public IReadOnlyDictionary<string, PtHost.Net.Signals.RendezvousEndpoint> SignalRoutes { get; private init; } = new Dictionary<string, PtHost.Net.Signals.RendezvousEndpoint>();

    /// <summary>A copy with other logging settings (PTHOST_LOGLEVEL and PTHOST_UNSAFE_LOGGING in PT 1.0 managed mode).</summary>
    public PtConfig WithLogging(Microsoft.Extensions.Logging.LogLevel level, bool unsafeLogging) => new()
    {
        IpcVersion = IpcVersion, PtVersion = PtVersion, Role = Role, Transports = Transports,
        ProxyListenAddresses = ProxyListenAddresses, BindAddresses = BindAddresses, Target = Target, Options = Options,
        Allow = Allow, PluginDirectory = PluginDirectory, StateDirectory = StateDirectory, ExitOnStdinClose = ExitOnStdinClose,
        LogLevel = level, UnsafeLogging = unsafeLogging, PublicFrontEnds = PublicFrontEnds, Turn = Turn, ExtendedOrPort = ExtendedOrPort, AuthCookieFile = AuthCookieFile, UpstreamProxy = UpstreamProxy,
        OutboundBindV4 = OutboundBindV4, OutboundBindV6 = OutboundBindV6, Metrics = Metrics, Instance = Instance, Mode = Mode, AnnouncedVersion = AnnouncedVersion, SignalRoutes = SignalRoutes,
    };

    /// <summary>
    /// A copy with what only the dispatcher command line sets (spec/ipc.md §12.1): the announced version and an
    /// ExtORPort with its cookie file.
    /// </summary>
    internal PtConfig WithDispatcher(string announcedVersion, IPEndPoint? extOrPort, string? authCookieFile) => new()
    {
        IpcVersion = IpcVersion, PtVersion = PtVersion, Role = Role, Transports = Transports,
        ProxyListenAddresses = ProxyListenAddresses, BindAddresses = BindAddresses, Target = Target, Options = Options,
        Allow = Allow, PluginDirectory = PluginDirectory, StateDirectory = StateDirectory, ExitOnStdinClose = ExitOnStdinClose,
        LogLevel = LogLevel, UnsafeLogging = UnsafeLogging, PublicFrontEnds = PublicFrontEnds, Turn = Turn, ExtendedOrPort = extOrPort, AuthCookieFile = authCookieFile, UpstreamProxy = UpstreamProxy,
        OutboundBindV4 = OutboundBindV4, OutboundBindV6 = OutboundBindV6, Metrics = Metrics, Instance = Instance, Mode = Mode, AnnouncedVersion = announcedVersion,
    };

    private static bool RelayOptionKindName(string text) => new RelayOption("instance", RelayOptionKind.Name, "").TryRead(text, out _, out _);

    /// <summary>The versions of the IPC this host speaks; "2" is printed as <c>VERSION 2</c>.</summary>
    public static bool IsSupportedVersion(string v) =>
        v.Split(',', StringSplitOptions.TrimEntries).Any(x => x is "2" or "2.0" or "2.1");

    /// <summary>Parses and validates the document (spec/ipc.md §3); throws <see cref="ConfigException"/> naming the first bad key's path.</summary>
    public static PtConfig Parse(string json)
    {
        try { return Read(OptionsReader.Parse(json)); }
        catch (OptionsException e) { throw new ConfigException(e.Path, e.Problem); }
    }

    /// <summary>Validates a parsed document; throws <see cref="ConfigException"/>.</summary>
    public static PtConfig FromObject(JObject root)
    {
        try { return Read(OptionsReader.For(root, "")); }
        catch (OptionsException e) { throw new ConfigException(e.Path, e.Problem); }
    }

    private static PtConfig Read(OptionsReader r)
    {
        // §3.3: unknown keys first, in document order.
        r.RejectUnknown(Keys);
        string version = r.String("ptversion", "2");
        Role role = r.Require("role", "\"client\" or \"server\"").OneOf("role", "client", "server") == "client" ? Role.Client : Role.Server;

        var transports = r.Require("transports", "an array of transport names")
            .List("transports", t => IsTransportName(t) ? t : null, "is not a transport name ([A-Za-z0-9_]{1,64})", nonEmpty: true)!;
        for (int i = 1; i < transports.Count; i++)
            if (transports.Take(i).Contains(transports[i])) throw new OptionsException($"transports[{i}]", $"\"{transports[i]}\" is listed twice");

        var options = new Dictionary<string, JToken>();
        var optionsObject = r.Object("options");
        foreach (string name in optionsObject.Keys)
        {
            if (!transports.Contains(name)) throw optionsObject.Fail(name, "names a transport that is not in transports");
            options[name] = optionsObject.Token(name)!;
        }

        var config = new PtConfig
        {
            PtVersion = version,
            Role = role,
            Transports = transports,
            Options = options,
            PluginDirectory = r.String("plugindir"),
            StateDirectory = ParseState(r),
            ExitOnStdinClose = r.Bool("exit-on-stdin-close", false),
            PublicFrontEnds = role == Role.Client ? r.Bool("public-frontends", false) : RejectFor(r, "public-frontends", "client", false),
            LogLevel = ParseLogLevel(r),
            UnsafeLogging = r.Bool("unsafe-logging", false),
            ProxyListenAddresses = role == Role.Client ? ParseProxyListen(r, transports) : RejectFor(r, "proxylistenaddr", "client", new Dictionary<string, IPEndPoint>()),
            BindAddresses = role == Role.Server ? ParseBindAddresses(r, transports) : RejectFor(r, "bindaddr", "server", new Dictionary<string, IPEndPoint>()),
            Mode = ParseMode(r),
            Target = ParseTarget(r),
            Allow = role == Role.Server ? ParseAllow(r) : RejectFor<AllowList?>(r, "allow", "server", null),
            UpstreamProxy = role == Role.Client ? ParseProxy(r) : RejectFor<string?>(r, "proxy", "client", null),
            Turn = role == Role.Client ? TurnConfig.Read(r.Object("turn"), transports.Count) : RejectFor<PtHost.Turn.TurnOptions?>(r, "turn", "client", null),
            Metrics = r.EndPoint("metrics"),
            SignalRoutes = ParseSignals(r, transports),
        };
        if (r.String("instance") is { } instance)
        {
            if (!RelayOptionKindName(instance)) throw r.Fail("instance", $"\"{instance}\" is not a name (1 to 64 of A-Z a-z 0-9 . _ -)");
            config.Instance = instance;
        }
        if (config.Role == Role.Client && !config.PublicFrontEnds) RejectPublicFrontEnds(r, config);
        if (config.Role == Role.Client && config.Mode == ClientMode.Socks5 && config.Target is not null)
            throw r.Fail("target", "a client takes a \"target\" only in a transparent mode (\"mode\": \"transparent-tcp\", \"transparent-udp\" or \"stun\"); a SOCKS5 client names its server per session");
        if (config.Role == Role.Server && config.Mode != ClientMode.Socks5)
            throw r.Fail("mode", "applies to role \"client\" only (a server serves every mode, spec/ipc.md §12)");
        if (config.Role == Role.Client && config.Mode != ClientMode.Socks5 && config.Turn is not null)
            throw r.Fail("turn", "a TURN front end needs \"mode\": \"socks5\"");
        if (config.Role == Role.Server && config.Target is null && config.Allow is null)
            throw r.Fail("allow", "a free server (no \"target\") requires an explicit \"allow\" list of destinations");
        if (config.Role == Role.Server && config.Target is not null && config.Allow is not null)
            throw r.Fail("allow", "only a free server (no \"target\") takes an \"allow\" list");
        if (config.PluginDirectory is not null && !Plugins.PluginSupport.IsSupported)
            throw r.Fail("plugindir", Plugins.PluginSupport.Unsupported);
        if (config.PluginDirectory is not null && !Directory.Exists(config.PluginDirectory))
            throw r.Fail("plugindir", $"\"{config.PluginDirectory}\" is not a directory");
        if (config.PluginDirectory is not null && Plugins.PluginDirectory.Problem(config.PluginDirectory) is { } unsafeDirectory)
            throw r.Fail("plugindir", unsafeDirectory);
        return config;
    }

    /// <summary>
    /// spec/ipc.md §3.2 <c>public-frontends</c>: a SOCKS5 port on a non-loopback address is an open proxy into the
    /// transport, a TURN port an amplifier for spoofed UDP; either needs the explicit opt-in.
    /// </summary>
    private static void RejectPublicFrontEnds(OptionsReader r, PtConfig config)
    {
        const string OptIn = "set \"public-frontends\": true to listen there on purpose";
        foreach (var (name, address) in config.ProxyListenAddresses)
            if (!IsLoopback(address.Address))
                throw r.Token("proxylistenaddr") is JObject
                    ? r.Object("proxylistenaddr").Fail(name, $"{address} is not a loopback address: a SOCKS5 front end there is an open proxy into the transport for anyone who reaches it; {OptIn}")
                    : r.Fail("proxylistenaddr", $"{address} is not a loopback address: a SOCKS5 front end there is an open proxy into the transport for anyone who reaches it; {OptIn}");
        if (config.Turn is { } turn && !IsLoopback(turn.ListenAddress.Address))
            throw r.Object("turn").Fail("listenaddr", $"{turn.ListenAddress} is not a loopback address: a TURN listener there answers anyone, and its unauthenticated replies amplify spoofed traffic; {OptIn}");
    }

    /// <summary>127.0.0.0/8, ::1, and their IPv4-mapped forms.</summary>
    /// <summary>spec/rendezvous.md §7.1: <c>"signals": {"rendezvous": URL, "secret": B64URL, "pin": HEX?}</c>, for every transport.</summary>
    private static Dictionary<string, PtHost.Net.Signals.RendezvousEndpoint> ParseSignals(OptionsReader r, IReadOnlyList<string> transports)
    {
        if (!r.Has("signals")) return [];
        var s = r.Object("signals");
        s.RejectUnknown("rendezvous", "secret", "pin");
        string url = s.Require("rendezvous", "an http:// or https:// URL").String("rendezvous")!;
        string secret = s.Require("secret", "16 to 64 bytes in base64url (pthost generate-secret)").String("secret")!;
        try
        {
            var endpoint = PtHost.Net.Signals.RendezvousEndpoint.Parse(url, secret, s.String("pin"));
            return transports.ToDictionary(t => t, _ => endpoint);
        }
        catch (FormatException e)
        {
            string key = e.Message.StartsWith("secret", StringComparison.Ordinal) ? "secret" : e.Message.StartsWith("rendezvous-pin", StringComparison.Ordinal) ? "pin" : "rendezvous";
            throw s.Fail(key, e.Message[(e.Message.IndexOf(':', StringComparison.Ordinal) + 2)..]);
        }
    }

    public static bool IsLoopback(IPAddress address) =>
        IPAddress.IsLoopback(address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address);

    /// <summary><c>proxy</c>: the upstream proxy URI, TOR_PT_PROXY's syntax (spec/external.md §2.1).</summary>
    private static string? ParseProxy(OptionsReader r)
    {
        string? text = r.String("proxy");
        if (text is null) return null;
        return Net.UpstreamProxy.TryParse(text, out _, out string? error) ? text : throw r.Fail("proxy", error!);
    }

    private static string ParseState(OptionsReader r)
    {
        string? text = r.String("state");
        if (text is null) return Directory.GetCurrentDirectory();
        if (text.Length == 0 || text.Contains('\0')) throw r.Fail("state", "must be a directory path");
        try { return Path.GetFullPath(text); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw r.Fail("state", $"\"{text}\" is not a usable path: {e.Message}");
        }
    }

    public static bool IsTransportName(string s) => s.Length is > 0 and <= 64 && s.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static T RejectFor<T>(OptionsReader r, string key, string role, T value) =>
        r.Has(key) ? throw r.Fail(key, $"applies to role \"{role}\" only") : value;

    private static Microsoft.Extensions.Logging.LogLevel ParseLogLevel(OptionsReader r) =>
        r.String("loglevel") is not { } s ? Microsoft.Extensions.Logging.LogLevel.Information
        : TryParseLogLevel(s) ?? throw r.Fail("loglevel", $"\"{s}\" is not one of error, warning, notice, info, debug, trace, none");

    /// <summary>The level names PtHost accepts (PT's names plus trace and none).</summary>
    public static Microsoft.Extensions.Logging.LogLevel? TryParseLogLevel(string s) => s switch
    {
        "notice" or "info" => Microsoft.Extensions.Logging.LogLevel.Information,
        "error" => Microsoft.Extensions.Logging.LogLevel.Error,
        "warning" => Microsoft.Extensions.Logging.LogLevel.Warning,
        "debug" => Microsoft.Extensions.Logging.LogLevel.Debug,
        "trace" => Microsoft.Extensions.Logging.LogLevel.Trace,
        "none" => Microsoft.Extensions.Logging.LogLevel.None,
        _ => null,
    };

    /// <summary>A per-transport address object (<c>proxylistenaddr</c>, <c>bindaddr</c>): transport → "ip:port"; unnamed transports get 127.0.0.1:0.</summary>
    private static Dictionary<string, IPEndPoint> ReadPerTransport(OptionsReader o, List<string> transports)
    {
        var result = new Dictionary<string, IPEndPoint>();
        foreach (string name in o.Keys)
        {
            if (!transports.Contains(name)) throw o.Fail(name, "names a transport that is not in transports");
            result[name] = o.EndPoint(name)!;
        }
        foreach (var t in transports) result.TryAdd(t, new IPEndPoint(IPAddress.Loopback, 0));
        return result;
    }

    private static Dictionary<string, IPEndPoint> ParseProxyListen(OptionsReader r, IReadOnlyList<string> transports)
    {
        var list = transports.ToList();
        if (r.Token("proxylistenaddr") is JObject) return ReadPerTransport(r.Object("proxylistenaddr"), list);
        if (r.Token("proxylistenaddr") is { Type: not JTokenType.String } other)
            throw r.Fail("proxylistenaddr", $"must be \"ip:port\" or an object transport → \"ip:port\", not {OptionsReader.Describe(other)}");
        var shared = r.EndPoint("proxylistenaddr") ?? new IPEndPoint(IPAddress.Loopback, 0);
        if (shared.Port != 0 && transports.Count > 1)
            throw r.Fail("proxylistenaddr", "a fixed port can serve one transport only; use port 0 or an object transport → \"ip:port\"");
        return list.ToDictionary(t => t, _ => shared);
    }

    private static Dictionary<string, IPEndPoint> ParseBindAddresses(OptionsReader r, IReadOnlyList<string> transports)
    {
        if (r.Token("bindaddr") is { Type: not JTokenType.Object } other)
            throw r.Fail("bindaddr", $"must be an object: transport → \"ip:port\", not {OptionsReader.Describe(other)}");
        return ReadPerTransport(r.Object("bindaddr"), transports.ToList());
    }

    private static Destination? ParseTarget(OptionsReader r) =>
        r.Parse("target", t => Destination.TryParse(t, out var d) && d.Port != 0 ? d : null, "must be host:port with a non-zero port");

    /// <summary><c>mode</c>: <c>socks5</c> (default), <c>transparent-tcp</c>, <c>transparent-udp</c> or <c>stun</c> (spec/ipc.md §3.2).</summary>
    private static ClientMode ParseMode(OptionsReader r) => r.String("mode") switch
    {
        null or "socks5" => ClientMode.Socks5,
        "transparent-tcp" => ClientMode.TransparentTcp,
        "transparent-udp" => ClientMode.TransparentUdp,
        "stun" => ClientMode.Stun,
        string other => throw r.Fail("mode", $"\"{other}\" is not one of socks5, transparent-tcp, transparent-udp, stun"),
    };

    private static AllowList? ParseAllow(OptionsReader r)
    {
        var entries = r.Strings("allow");
        if (entries is null) return null;
        try { return AllowList.Parse(entries); }
        catch (FormatException fe) { throw r.Fail("allow", fe.Message); }
    }
}
