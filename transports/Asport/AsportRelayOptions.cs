using System.Globalization;
using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>
/// <c>pthost relay asport --config FILE</c> (spec/asport.md §5): a strict JSON object.
/// <code>
/// { "certificate": "cert.pem", "key": "key.pem",
///   "users": { "UUID": "password" },
///   "allowed_ports": ["20000-20100", "8080"],
///   "allowed_networks": ["127.0.0.0/8", "::1"],
///   "bind_address": "0.0.0.0",
///   "reply_auth_failed": false,
///   "handshake_timeout": 3, "idle_timeout": 10, "association_timeout": 300 }
/// </code>
/// Relative paths are relative to the configuration file.
/// </summary>
public sealed record AsportRelayOptions
{
    public IPEndPoint Listen { get; init; } = new(IPAddress.Loopback, 0);
    public required QuicCertificate Certificate { get; init; }
    public required IReadOnlyDictionary<Guid, string> Users { get; init; }
    public required IReadOnlyList<(ushort Start, ushort End)> AllowedPorts { get; init; }
    public required AllowList AllowedNetworks { get; init; }
    public IPAddress BindAddress { get; init; } = IPAddress.Any;
    public bool ReplyAuthFailed { get; init; }
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(3);
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan AssociationTimeout { get; init; } = TimeSpan.FromMinutes(5);
    public TimeSpan ReassemblyTimeout { get; init; } = TimeSpan.FromSeconds(15);

    private static readonly HashSet<string> Keys =
        ["certificate", "key", "users", "allowed_ports", "allowed_networks", "bind_address", "reply_auth_failed",
         "handshake_timeout", "idle_timeout", "association_timeout"];

    /// <summary>Parses the file; throws <see cref="FormatException"/> naming the offending key.</summary>
    public static AsportRelayOptions Load(string path)
    {
        var text = File.ReadAllText(path);
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        JObject o;
        try { o = StrictJson.ParseObject(text); }
        catch (Exception e) { throw new FormatException("not a JSON object: " + e.Message); }
        foreach (var p in o.Properties())
            if (!Keys.Contains(p.Name)) throw new FormatException($"unknown key \"{p.Name}\"");
        string Str(string key) => o[key] is JValue { Type: JTokenType.String } v ? (string)v! : throw new FormatException($"\"{key}\" must be a string");
        string Rel(string key) => Path.Combine(dir, Str(key));

        QuicCertificate cert;
        try { cert = QuicCertificate.Load(Rel("certificate"), Rel("key")); }
        catch (Exception e) when (e is IOException or System.Security.Cryptography.CryptographicException or ArgumentException)
        { throw new FormatException("\"certificate\"/\"key\": " + e.Message); }

        var users = new Dictionary<Guid, string>();
        if (o["users"] is not JObject uo || uo.Count == 0) throw new FormatException("\"users\" must be a non-empty object of UUID: password");
        foreach (var u in uo.Properties())
        {
            if (!Guid.TryParseExact(u.Name, "D", out var id)) throw new FormatException($"\"users\": \"{u.Name}\" is not a UUID");
            if (u.Value is not JValue { Type: JTokenType.String } pw || ((string)pw!).Length == 0) throw new FormatException($"\"users\": password of {u.Name} must be a non-empty string");
            users[id] = (string)pw!;
        }

        var ports = new List<(ushort, ushort)>();
        if (o["allowed_ports"] is not JArray pa || pa.Count == 0) throw new FormatException("\"allowed_ports\" must be a non-empty array of \"N\" or \"N-M\"");
        foreach (var t in pa)
        {
            if (t is not JValue { Type: JTokenType.String } sv || !TryParseRange((string)sv!, out var r)) throw new FormatException($"\"allowed_ports\": {t} is not \"N\" or \"N-M\" with 1 <= N <= M <= 65535");
            ports.Add(r);
        }

        if (o["allowed_networks"] is not JArray na) throw new FormatException("\"allowed_networks\" must be an array of ip or ip/prefix");
        AllowList networks;
        try { networks = AllowList.Parse(na.Select(t => t is JValue { Type: JTokenType.String } v ? (string)v! : throw new FormatException($"\"allowed_networks\": {t} is not a string"))); }
        catch (FormatException e) { throw new FormatException("\"allowed_networks\": " + e.Message); }

        var options = new AsportRelayOptions { Certificate = cert, Users = users, AllowedPorts = ports, AllowedNetworks = networks };
        if (o["bind_address"] is not null)
            options = options with { BindAddress = Destination.ParseLiteral(Str("bind_address")) ?? throw new FormatException("\"bind_address\" is not an IP literal") };
        if (o["reply_auth_failed"] is { } raf)
            options = options with { ReplyAuthFailed = raf is JValue { Type: JTokenType.Boolean } b ? (bool)b! : throw new FormatException("\"reply_auth_failed\" must be true or false") };
        TimeSpan Seconds(string key, TimeSpan dflt)
        {
            if (o[key] is null) return dflt;
            if (!StrictJson.TryGetInt64(o[key], out var s) || s <= 0 || s > 86_400) throw new FormatException($"\"{key}\" must be whole seconds 1..86400");
            return TimeSpan.FromSeconds(s);
        }
        return options with
        {
            HandshakeTimeout = Seconds("handshake_timeout", options.HandshakeTimeout),
            IdleTimeout = Seconds("idle_timeout", options.IdleTimeout),
            AssociationTimeout = Seconds("association_timeout", options.AssociationTimeout),
        };
    }

    public static bool TryParseRange(string s, out (ushort Start, ushort End) range)
    {
        range = default;
        var dash = s.IndexOf('-');
        var a = dash < 0 ? s : s[..dash];
        var b = dash < 0 ? s : s[(dash + 1)..];
        if (!ushort.TryParse(a, NumberStyles.None, CultureInfo.InvariantCulture, out var start) ||
            !ushort.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out var end) || start == 0 || start > end) return false;
        range = (start, end);
        return true;
    }
}
