using System.Collections;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Configuration;

/// <summary>A PT 1.0 environment error: printed as <c>ENV-ERROR message</c>; exit 78 (spec/ipc.md §10).</summary>
public sealed class EnvironmentException(string message) : Exception(message);

/// <summary>TOR_PT_MANAGED_TRANSPORT_VER names no version this host speaks: <c>VERSION-ERROR no-version</c>.</summary>
public sealed class NoVersionException(string offered) : Exception($"TOR_PT_MANAGED_TRANSPORT_VER=\"{offered}\" names no version pthost speaks (1)");

/// <summary>PT 1.0 managed mode (pt-spec §3.2, spec/ipc.md §10): the configuration read from Tor's environment.</summary>
public sealed partial class PtConfig
{
    public const string ManagedVersionVariable = "TOR_PT_MANAGED_TRANSPORT_VER";

    /// <summary>1 in PT 1.0 managed mode (no signal channel; PT 1.0 lines only), else 2.</summary>
    public int IpcVersion { get; private init; } = 2;

    /// <summary>TOR_PT_EXTENDED_SERVER_PORT: sessions go through the ExtORPort handshake to this address.</summary>
    public IPEndPoint? ExtendedOrPort { get; private init; }

    /// <summary>TOR_PT_AUTH_COOKIE_FILE, re-read for every ExtORPort connection.</summary>
    public string? AuthCookieFile { get; private init; }

    /// <summary>TOR_PT_PROXY as given; validated before anything starts (PROXY-ERROR).</summary>
    public string? UpstreamProxy { get; private init; }

    /// <summary>TOR_PT_OUTBOUND_BIND_ADDRESS_V4 / _V6: local addresses for outgoing connections (not to loopback).</summary>
    public IPAddress? OutboundBindV4 { get; private init; }
    public IPAddress? OutboundBindV6 { get; private init; }

    /// <summary>True when the process was started by a PT 1.0 parent (the variable is present).</summary>
    public static bool IsManaged(IDictionary env) => env.Contains(ManagedVersionVariable);

    /// <summary>
    /// Reads pt-spec v1's variables. <paramref name="known"/> names the transports this host has:
    /// the others are ignored, as pt-spec says (the caller logs them). Throws
    /// <see cref="NoVersionException"/> or <see cref="EnvironmentException"/>.
    /// </summary>
    public static PtConfig FromTorEnvironment(IDictionary env, IReadOnlyCollection<string> known, out IReadOnlyList<string> ignored)
    {
        string? Get(string name) => env[name] as string;

        string versions = Get(ManagedVersionVariable) ?? "";
        if (!versions.Split(',').Contains("1")) throw new NoVersionException(versions);

        string state = Get("TOR_PT_STATE_LOCATION") ?? throw new EnvironmentException("No TOR_PT_STATE_LOCATION environment variable.");
        if (state.Length == 0 || state.Contains('\0') || !Path.IsPathFullyQualified(state))
            throw new EnvironmentException($"TOR_PT_STATE_LOCATION \"{state}\" is not an absolute path");

        bool exitOnStdinClose = Get("TOR_PT_EXIT_ON_STDIN_CLOSE") switch
        {
            null or "" or "0" => false,
            "1" => true,
            var other => throw new EnvironmentException($"TOR_PT_EXIT_ON_STDIN_CLOSE=\"{other}\" is neither 0 nor 1"),
        };

        string? clientList = Get("TOR_PT_CLIENT_TRANSPORTS");
        string? serverList = Get("TOR_PT_SERVER_TRANSPORTS");
        if (clientList is null && serverList is null)
            throw new EnvironmentException("neither TOR_PT_CLIENT_TRANSPORTS nor TOR_PT_SERVER_TRANSPORTS is set");
        if (clientList is not null && serverList is not null)
            throw new EnvironmentException("both TOR_PT_CLIENT_TRANSPORTS and TOR_PT_SERVER_TRANSPORTS are set; pthost runs one role per process");
        Role role = clientList is not null ? Role.Client : Role.Server;

        var wanted = new List<string>();
        var skipped = new List<string>();
        foreach (string raw in (clientList ?? serverList)!.Split(','))
        {
            string name = raw.Trim();
            if (name.Length == 0) continue;
            if (name == "*") { foreach (var k in known) if (!wanted.Contains(k)) wanted.Add(k); continue; }
            if (known.Contains(name)) { if (!wanted.Contains(name)) wanted.Add(name); }
            else skipped.Add(name);
        }
        ignored = skipped;

        IPAddress? bind4 = ParseBindAddress("TOR_PT_OUTBOUND_BIND_ADDRESS_V4", Get("TOR_PT_OUTBOUND_BIND_ADDRESS_V4"), AddressFamily.InterNetwork);
        IPAddress? bind6 = ParseBindAddress("TOR_PT_OUTBOUND_BIND_ADDRESS_V6", Get("TOR_PT_OUTBOUND_BIND_ADDRESS_V6"), AddressFamily.InterNetworkV6);
        // spec/ipc.md §10.2, §4.12: PtHost's own knobs for the metrics endpoint, both roles (tor passes its environment on),
        // read after tor's variables: errors come in the order of the table.
        (IPEndPoint? Metrics, string? Instance) Own()
        {
            IPEndPoint? metrics = Get("PTHOST_METRICS") is { Length: > 0 } metricsText
                ? (Destination.TryParse(metricsText, out var m) && m.Address is not null ? new IPEndPoint(m.Address, m.Port) : throw new EnvironmentException($"PTHOST_METRICS=\"{metricsText}\" is not ip:port"))
                : null;
            string? instance = Get("PTHOST_INSTANCE") is { Length: > 0 } instanceText
                ? (RelayOptionKindName(instanceText) ? instanceText : throw new EnvironmentException($"PTHOST_INSTANCE=\"{instanceText}\" is not a name (1 to 64 of A-Z a-z 0-9 . _ -)"))
                : null;
            return (metrics, instance);
        }

        if (role == Role.Client)
        {
            var (metrics, instance) = Own();
            var client = new PtConfig
            {
                IpcVersion = 1,
                PtVersion = "1",
                Role = Role.Client,
                Transports = wanted,
                StateDirectory = state,
                ExitOnStdinClose = exitOnStdinClose,
                UpstreamProxy = Get("TOR_PT_PROXY") is { Length: > 0 } proxy ? proxy : null,
                OutboundBindV4 = bind4,
                OutboundBindV6 = bind6,
                ProxyListenAddresses = wanted.ToDictionary(t => t, _ => new IPEndPoint(IPAddress.Loopback, 0)),
                Metrics = metrics,
            };
            if (instance is not null) client.Instance = instance;
            return client;
        }

        var bindAddresses = ParseServerBindAddresses(Get("TOR_PT_SERVER_BINDADDR"), wanted);
        var options = ParseServerTransportOptions(Get("TOR_PT_SERVER_TRANSPORT_OPTIONS"), wanted);
        var routes = TakeSignalRoutes(options);
        IPEndPoint? orPort = ParseOptionalEndPoint("TOR_PT_ORPORT", Get("TOR_PT_ORPORT"));
        IPEndPoint? extOrPort = ParseOptionalEndPoint("TOR_PT_EXTENDED_SERVER_PORT", Get("TOR_PT_EXTENDED_SERVER_PORT"));
        string? cookie = Get("TOR_PT_AUTH_COOKIE_FILE") is { Length: > 0 } c ? c : null;
        if (extOrPort is not null && cookie is null)
            throw new EnvironmentException("TOR_PT_EXTENDED_SERVER_PORT is set but TOR_PT_AUTH_COOKIE_FILE is not");
        var target = extOrPort ?? orPort ?? throw new EnvironmentException("neither TOR_PT_ORPORT nor TOR_PT_EXTENDED_SERVER_PORT is set");
        var (serverMetrics, serverInstance) = Own();
        var server = new PtConfig
        {
            IpcVersion = 1,
            PtVersion = "1",
            Role = Role.Server,
            Transports = wanted,
            StateDirectory = state,
            ExitOnStdinClose = exitOnStdinClose,
            OutboundBindV4 = bind4,
            OutboundBindV6 = bind6,
            BindAddresses = bindAddresses,
            Options = options,
            Target = new Destination(target.Address.ToString(), (ushort)target.Port),
            ExtendedOrPort = extOrPort,
            AuthCookieFile = extOrPort is null ? null : cookie,
            Metrics = serverMetrics,
            SignalRoutes = routes,
        };
        if (serverInstance is not null) server.Instance = serverInstance;
        return server;
    }

    /// <summary>The option keys a bridge line's signal route takes (spec/rendezvous.md §7.1): the host's, never the transport's.</summary>
    public static readonly string[] RouteKeys = ["rendezvous", "secret", "rendezvous-pin"];

    /// <summary>
    /// spec/rendezvous.md §7.1: <c>t:rendezvous=URL;t:secret=S[;t:rendezvous-pin=P]</c> in TOR_PT_SERVER_TRANSPORT_OPTIONS route
    /// transport t's signals; the keys are removed from its options. A half-given route is an ENV-ERROR.
    /// </summary>
    private static Dictionary<string, PtHost.Net.Signals.RendezvousEndpoint> TakeSignalRoutes(Dictionary<string, JToken> options)
    {
        var routes = new Dictionary<string, PtHost.Net.Signals.RendezvousEndpoint>();
        foreach (var (name, token) in options)
        {
            if (token is not JObject o || !RouteKeys.Any(o.ContainsKey)) continue;
            string? url = (string?)o["rendezvous"], secret = (string?)o["secret"], pin = (string?)o["rendezvous-pin"];
            if (url is null || secret is null)
                throw new EnvironmentException($"TOR_PT_SERVER_TRANSPORT_OPTIONS: {name}:rendezvous and {name}:secret go together");
            try { routes[name] = PtHost.Net.Signals.RendezvousEndpoint.Parse(url, secret, pin); }
            catch (FormatException e) { throw new EnvironmentException($"TOR_PT_SERVER_TRANSPORT_OPTIONS: {name}:{e.Message}"); }
            foreach (string k in RouteKeys) o.Remove(k);
        }
        return routes;
    }

    private static IPAddress? ParseBindAddress(string variable, string? text, AddressFamily family)
    {
        if (string.IsNullOrEmpty(text)) return null;
        string inner = family == AddressFamily.InterNetworkV6 && text.StartsWith('[') && text.EndsWith(']') ? text[1..^1] : text;
        bool ok = family == AddressFamily.InterNetwork
            ? Destination.IsStrictIPv4(inner) && IPAddress.TryParse(inner, out _)
            : inner != text && IPAddress.TryParse(inner, out var a6) && a6.AddressFamily == AddressFamily.InterNetworkV6;
        if (!ok)
            throw new EnvironmentException(family == AddressFamily.InterNetwork
                ? $"{variable}=\"{text}\" is not an IPv4 address"
                : $"{variable}=\"{text}\" is not an IPv6 address in brackets");
        return IPAddress.Parse(inner);
    }

    private static IPEndPoint? ParseOptionalEndPoint(string variable, string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        if (!Destination.TryParse(text, out var d) || d.Address is null || d.Port == 0)
            throw new EnvironmentException($"{variable}=\"{text}\" is not ip:port");
        return new IPEndPoint(d.Address, d.Port);
    }

    /// <summary>TOR_PT_SERVER_BINDADDR: <c>name-ip:port,name-ip:port</c>; absent names bind 127.0.0.1:0.</summary>
    public static Dictionary<string, IPEndPoint> ParseServerBindAddresses(string? text, IReadOnlyList<string> transports)
    {
        var result = new Dictionary<string, IPEndPoint>();
        if (!string.IsNullOrEmpty(text))
        {
            foreach (string item in text.Split(','))
            {
                int dash = item.IndexOf('-');
                if (dash <= 0) throw new EnvironmentException($"TOR_PT_SERVER_BINDADDR entry \"{item}\" is not name-ip:port");
                string name = item[..dash];
                string addr = item[(dash + 1)..];
                if (!Destination.TryParse(addr, out var d) || d.Address is null)
                    throw new EnvironmentException($"TOR_PT_SERVER_BINDADDR entry \"{item}\": \"{addr}\" is not ip:port");
                if (!result.TryAdd(name, new IPEndPoint(d.Address, d.Port)))
                    throw new EnvironmentException($"TOR_PT_SERVER_BINDADDR names \"{name}\" twice");
            }
        }
        foreach (string t in transports) result.TryAdd(t, new IPEndPoint(IPAddress.Loopback, 0));
        return result;
    }

    /// <summary>
    /// TOR_PT_SERVER_TRANSPORT_OPTIONS: <c>name:k=v;name:k=v</c>, where <c>\</c> escapes the next
    /// character (so <c>\:</c>, <c>\;</c>, <c>\=</c>, <c>\\</c>). Each transport's pairs become a JSON
    /// object of strings, its <c>options</c>. Options of transports not run are ignored.
    /// </summary>
    public static Dictionary<string, JToken> ParseServerTransportOptions(string? text, IReadOnlyList<string> transports)
    {
        var result = new Dictionary<string, JToken>();
        if (string.IsNullOrEmpty(text)) return result;
        var objects = new Dictionary<string, JObject>();
        var field = new StringBuilder();
        string? name = null, key = null;
        for (int i = 0; i <= text.Length; i++)
        {
            char c = i < text.Length ? text[i] : ';';
            if (c == '\\' && i < text.Length)
            {
                if (++i == text.Length) throw new EnvironmentException("TOR_PT_SERVER_TRANSPORT_OPTIONS ends with an unfinished escape '\\'");
                field.Append(text[i]);
            }
            else if (c == ':' && name is null) { name = field.ToString(); field.Clear(); }
            else if (c == '=' && name is not null && key is null) { key = field.ToString(); field.Clear(); }
            else if (c == ';')
            {
                if (i == text.Length && name is null && field.Length == 0) break; // a trailing ';'
                if (name is null || key is null || name.Length == 0 || key.Length == 0)
                    throw new EnvironmentException($"TOR_PT_SERVER_TRANSPORT_OPTIONS item \"{(name is null ? "" : name + ":")}{key}{(key is null ? "" : "=")}{field}\" is not transport:key=value");
                if (!objects.TryGetValue(name, out var o)) objects[name] = o = new JObject();
                if (o.ContainsKey(key)) throw new EnvironmentException($"TOR_PT_SERVER_TRANSPORT_OPTIONS gives {name}:{key} twice");
                o[key] = field.ToString();
                name = key = null;
                field.Clear();
            }
            else field.Append(c);
        }
        foreach (var (n, o) in objects)
            if (transports.Contains(n)) result[n] = o;
        return result;
    }
}
