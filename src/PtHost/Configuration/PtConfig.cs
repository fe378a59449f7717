using System.Net;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Configuration;

/// <summary>The process role (spec/ipc.md §3).</summary>
public enum Role { Client, Server }

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
        "plugindir", "state", "exit-on-stdin-close", "loglevel",
    ];

    public string PtVersion { get; private init; } = "2";
    public Role Role { get; private init; }
    public IReadOnlyList<string> Transports { get; private init; } = [];
    public IReadOnlyDictionary<string, IPEndPoint> ProxyListenAddresses { get; private init; } = new Dictionary<string, IPEndPoint>();
    public IReadOnlyDictionary<string, IPEndPoint> BindAddresses { get; private init; } = new Dictionary<string, IPEndPoint>();
    public Destination? Target { get; private init; }
    public IReadOnlyDictionary<string, JToken> Options { get; private init; } = new Dictionary<string, JToken>();
    public AllowList? Allow { get; private init; }
    public string? PluginDirectory { get; private init; }
    public string StateDirectory { get; private init; } = Directory.GetCurrentDirectory();
    public bool ExitOnStdinClose { get; private init; }
    public Microsoft.Extensions.Logging.LogLevel LogLevel { get; private init; } = Microsoft.Extensions.Logging.LogLevel.Information;

    /// <summary>A copy with another log level (PTHOST_LOGLEVEL in PT 1.0 managed mode).</summary>
    public PtConfig WithLogLevel(Microsoft.Extensions.Logging.LogLevel level) => new()
    {
        IpcVersion = IpcVersion, PtVersion = PtVersion, Role = Role, Transports = Transports,
        ProxyListenAddresses = ProxyListenAddresses, BindAddresses = BindAddresses, Target = Target, Options = Options,
        Allow = Allow, PluginDirectory = PluginDirectory, StateDirectory = StateDirectory, ExitOnStdinClose = ExitOnStdinClose,
        LogLevel = level, ExtendedOrPort = ExtendedOrPort, AuthCookieFile = AuthCookieFile, UpstreamProxy = UpstreamProxy,
        OutboundBindV4 = OutboundBindV4, OutboundBindV6 = OutboundBindV6,
    };

    /// <summary>The versions of the IPC this host speaks; "2" is printed as <c>VERSION 2</c>.</summary>
    public static bool IsSupportedVersion(string v) =>
        v.Split(',', StringSplitOptions.TrimEntries).Any(x => x is "2" or "2.0" or "2.1");

    public static PtConfig Parse(string json)
    {
        JObject root;
        try { root = StrictJson.Parse(json) as JObject ?? throw new ConfigException("(document)", "must be a JSON object"); }
        catch (FormatException e) { throw new ConfigException("(document)", "not valid JSON (RFC 8259): " + e.Message); }
        return FromObject(root);
    }

    public static PtConfig FromObject(JObject root)
    {
        foreach (var p in root.Properties())
            if (Array.IndexOf(Keys, p.Name) < 0)
                throw new ConfigException(p.Name, "unknown key (known: " + string.Join(", ", Keys) + ")");

        string version = OptionalString(root, "ptversion") ?? "2";
        string roleText = OptionalString(root, "role") ?? throw new ConfigException("role", "required: \"client\" or \"server\"");
        Role role = roleText switch
        {
            "client" => Role.Client,
            "server" => Role.Server,
            _ => throw new ConfigException("role", $"must be \"client\" or \"server\", not \"{roleText}\""),
        };

        var transportsToken = root["transports"] as JArray ?? throw new ConfigException("transports", "required: an array of transport names");
        var transports = new List<string>();
        foreach (var t in transportsToken)
        {
            if (t.Type != JTokenType.String || !IsTransportName((string)t!))
                throw new ConfigException("transports", $"{t.ToString(Formatting.None)} is not a transport name ([A-Za-z0-9_]+)");
            if (transports.Contains((string)t!)) throw new ConfigException("transports", $"\"{t}\" is listed twice");
            transports.Add((string)t!);
        }
        if (transports.Count == 0) throw new ConfigException("transports", "must name at least one transport");

        var options = new Dictionary<string, JToken>();
        if (root["options"] is { } optionsToken)
        {
            if (optionsToken is not JObject o) throw new ConfigException("options", "must be an object: transport → JSON");
            foreach (var p in o.Properties())
            {
                if (!transports.Contains(p.Name)) throw new ConfigException("options", $"names \"{p.Name}\", which is not in transports");
                options[p.Name] = p.Value;
            }
        }

        var config = new PtConfig
        {
            PtVersion = version,
            Role = role,
            Transports = transports,
            Options = options,
            PluginDirectory = OptionalString(root, "plugindir"),
            StateDirectory = ParseState(OptionalString(root, "state")),
            ExitOnStdinClose = OptionalBool(root, "exit-on-stdin-close") ?? false,
            LogLevel = ParseLogLevel(OptionalString(root, "loglevel")),
            ProxyListenAddresses = role == Role.Client ? ParseProxyListen(root, transports) : RejectFor(root, "proxylistenaddr", "client", new Dictionary<string, IPEndPoint>()),
            BindAddresses = role == Role.Server ? ParseBindAddresses(root, transports) : RejectFor(root, "bindaddr", "server", new Dictionary<string, IPEndPoint>()),
            Target = role == Role.Server ? ParseTarget(root) : RejectFor<Destination?>(root, "target", "server", null),
            Allow = role == Role.Server ? ParseAllow(root) : RejectFor<AllowList?>(root, "allow", "server", null),
        };
        if (config.Role == Role.Server && config.Target is null && config.Allow is null)
            throw new ConfigException("allow", "a free server (no \"target\") requires an explicit \"allow\" list of destinations");
        if (config.Role == Role.Server && config.Target is not null && config.Allow is not null)
            throw new ConfigException("allow", "only a free server (no \"target\") takes an \"allow\" list");
        if (config.PluginDirectory is not null && !Directory.Exists(config.PluginDirectory))
            throw new ConfigException("plugindir", $"\"{config.PluginDirectory}\" is not a directory");
        return config;
    }

    private static string ParseState(string? text)
    {
        if (text is null) return Directory.GetCurrentDirectory();
        if (text.Length == 0 || text.Contains('\0')) throw new ConfigException("state", "must be a directory path");
        try { return Path.GetFullPath(text); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new ConfigException("state", $"\"{text}\" is not a usable path: {e.Message}");
        }
    }

    public static bool IsTransportName(string s) => s.Length is > 0 and <= 64 && s.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static T RejectFor<T>(JObject root, string key, string role, T value) =>
        root[key] is null ? value : throw new ConfigException(key, $"applies to role \"{role}\" only");

    private static string? OptionalString(JObject root, string key) => root[key] switch
    {
        null => null,
        { Type: JTokenType.String } t => (string)t!,
        _ => throw new ConfigException(key, "must be a string"),
    };

    private static bool? OptionalBool(JObject root, string key) => root[key] switch
    {
        null => null,
        { Type: JTokenType.Boolean } t => (bool)t,
        _ => throw new ConfigException(key, "must be true or false"),
    };

    private static Microsoft.Extensions.Logging.LogLevel ParseLogLevel(string? s) =>
        s is null ? Microsoft.Extensions.Logging.LogLevel.Information
        : TryParseLogLevel(s) ?? throw new ConfigException("loglevel", $"\"{s}\" is not one of error, warning, notice, info, debug, trace, none");

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

    public static IPEndPoint ParseEndPoint(string key, string text)
    {
        if (!Destination.TryParse(text, out var d) || d.Address is null)
            throw new ConfigException(key, $"\"{text}\" is not ip:port (IPv6 as [addr]:port)");
        return new IPEndPoint(d.Address, d.Port);
    }

    private static Dictionary<string, IPEndPoint> ParseProxyListen(JObject root, List<string> transports)
    {
        var result = new Dictionary<string, IPEndPoint>();
        var token = root["proxylistenaddr"];
        if (token is JObject perTransport)
        {
            foreach (var p in perTransport.Properties())
            {
                if (!transports.Contains(p.Name)) throw new ConfigException("proxylistenaddr", $"names \"{p.Name}\", which is not in transports");
                if (p.Value.Type != JTokenType.String) throw new ConfigException("proxylistenaddr", $"\"{p.Name}\" must be \"ip:port\"");
                result[p.Name] = ParseEndPoint("proxylistenaddr", (string)p.Value!);
            }
            foreach (var t in transports) result.TryAdd(t, new IPEndPoint(IPAddress.Loopback, 0));
            return result;
        }
        var shared = token is null ? new IPEndPoint(IPAddress.Loopback, 0)
            : token.Type == JTokenType.String ? ParseEndPoint("proxylistenaddr", (string)token!)
            : throw new ConfigException("proxylistenaddr", "must be \"ip:port\" or an object transport → \"ip:port\"");
        if (shared.Port != 0 && transports.Count > 1)
            throw new ConfigException("proxylistenaddr", "a fixed port can serve one transport only; use port 0 or an object transport → \"ip:port\"");
        foreach (var t in transports) result[t] = shared;
        return result;
    }

    private static Dictionary<string, IPEndPoint> ParseBindAddresses(JObject root, List<string> transports)
    {
        var result = new Dictionary<string, IPEndPoint>();
        if (root["bindaddr"] is { } token)
        {
            if (token is not JObject o) throw new ConfigException("bindaddr", "must be an object: transport → \"ip:port\"");
            foreach (var p in o.Properties())
            {
                if (!transports.Contains(p.Name)) throw new ConfigException("bindaddr", $"names \"{p.Name}\", which is not in transports");
                if (p.Value.Type != JTokenType.String) throw new ConfigException("bindaddr", $"\"{p.Name}\" must be \"ip:port\"");
                result[p.Name] = ParseEndPoint("bindaddr", (string)p.Value!);
            }
        }
        foreach (var t in transports) result.TryAdd(t, new IPEndPoint(IPAddress.Loopback, 0));
        return result;
    }

    private static Destination? ParseTarget(JObject root)
    {
        string? text = OptionalString(root, "target");
        if (text is null) return null;
        if (!Destination.TryParse(text, out var d) || d.Port == 0)
            throw new ConfigException("target", $"\"{text}\" is not host:port with a non-zero port");
        return d;
    }

    private static AllowList? ParseAllow(JObject root)
    {
        var token = root["allow"];
        if (token is null) return null;
        if (token is not JArray a) throw new ConfigException("allow", "must be an array of \"ip-or-cidr[:port]\" strings");
        var entries = new List<string>();
        foreach (var e in a)
        {
            if (e.Type != JTokenType.String) throw new ConfigException("allow", $"{e.ToString(Formatting.None)} must be a string");
            entries.Add((string)e!);
        }
        try { return AllowList.Parse(entries); }
        catch (FormatException fe) { throw new ConfigException("allow", fe.Message); }
    }
}
