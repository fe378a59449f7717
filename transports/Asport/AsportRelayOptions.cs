using System.Globalization;
using System.Net;
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
///   "handshake_timeout": 3, "idle_timeout": 10, "association_timeout": 300,
///   "max_connections": 4096, "max_connections_per_source": 16, "source_prefix_v6": 64, "retry": "load" }
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
    /// <summary>§5.1: QUIC connections held at once, in total and per source (IPv4 address or IPv6 /<see cref="SourcePrefixV6"/>).</summary>
    public int MaxConnections { get; init; } = 4096;
    public int MaxConnectionsPerSource { get; init; } = 16;
    public int SourcePrefixV6 { get; init; } = 64;
    /// <summary>§5.1: Retry policy (RFC 9000 §8.1.2).</summary>
    public QuicRetryPolicy Retry { get; init; } = QuicRetryPolicy.UnderLoad;
    /// <summary>§5.1: public TCP connections per client that wait for a stream, and UDP packets per client waiting
    /// for a unidirectional stream (QUIC mode); beyond them the excess is dropped and counted.</summary>
    public int MaxPendingTcp { get; init; } = 1024;
    public int MaxPendingPackets { get; init; } = 2048;

    private static readonly string[] Keys =
        ["certificate", "key", "users", "allowed_ports", "allowed_networks", "bind_address", "reply_auth_failed",
         "handshake_timeout", "idle_timeout", "association_timeout",
         "max_connections", "max_connections_per_source", "source_prefix_v6", "retry"];

    /// <summary>Reads the file; throws <see cref="OptionsException"/> naming the offending key, or an I/O exception.</summary>
    public static AsportRelayOptions Load(string path)
    {
        var text = File.ReadAllText(path);
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var o = OptionsReader.Parse(text);
        o.RejectUnknown(Keys);

        string certificate = o.Require("certificate").String("certificate")!, key = o.Require("key").String("key")!;
        QuicCertificate cert;
        try { cert = QuicCertificate.Load(Path.Combine(dir, certificate), Path.Combine(dir, key)); }
        catch (UnauthorizedAccessException e) { throw o.Fail("key", e.Message, e); } // spec/asport.md §5: a private file
        catch (Exception e) when (e is IOException or System.Security.Cryptography.CryptographicException or ArgumentException)
        { throw o.Fail("certificate", "unusable with \"key\": " + e.Message, e); }

        var usersObject = o.Require("users", "an object \"UUID\": \"password\"").Object("users");
        var users = new Dictionary<Guid, string>();
        foreach (string name in usersObject.Keys)
        {
            if (!Guid.TryParseExact(name, "D", out var id)) throw usersObject.Fail(name, "is not a UUID");
            string password = usersObject.String(name)!;
            if (password.Length == 0) throw usersObject.Fail(name, "the password must not be empty");
            users[id] = password;
        }
        if (users.Count == 0) throw o.Fail("users", "must name at least one user: \"UUID\": \"password\"");

        var ports = o.Require("allowed_ports").List("allowed_ports", t => TryParseRange(t, out _) ? t : null,
            "is not \"N\" or \"N-M\" with 1 <= N <= M <= 65535", nonEmpty: true)!;

        var networkEntries = o.Require("allowed_networks").Strings("allowed_networks")!;
        AllowList networks;
        try { networks = AllowList.Parse(networkEntries); }
        catch (FormatException e) { throw o.Fail("allowed_networks", e.Message, e); }

        var options = new AsportRelayOptions
        {
            Certificate = cert,
            Users = users,
            AllowedPorts = ports.Select(p => TryParseRange(p, out var range) ? range : default).ToList(),
            AllowedNetworks = networks,
            BindAddress = o.Address("bind_address") ?? IPAddress.Any,
            ReplyAuthFailed = o.Bool("reply_auth_failed", false),
        };
        TimeSpan Seconds(string k, TimeSpan fallback) => o.Integer(k, 1, 86_400) is { } s ? TimeSpan.FromSeconds(s) : fallback;
        var retry = o.String("retry") switch
        {
            null or "load" => QuicRetryPolicy.UnderLoad,
            "always" => QuicRetryPolicy.Always,
            "never" => QuicRetryPolicy.Never,
            _ => throw o.Fail("retry", "must be \"load\", \"always\" or \"never\""),
        };
        return options with
        {
            HandshakeTimeout = Seconds("handshake_timeout", options.HandshakeTimeout),
            IdleTimeout = Seconds("idle_timeout", options.IdleTimeout),
            AssociationTimeout = Seconds("association_timeout", options.AssociationTimeout),
            MaxConnections = (int)o.Integer("max_connections", options.MaxConnections, 1, 1_000_000),
            MaxConnectionsPerSource = (int)o.Integer("max_connections_per_source", options.MaxConnectionsPerSource, 1, 1_000_000),
            SourcePrefixV6 = (int)o.Integer("source_prefix_v6", options.SourcePrefixV6, 1, 128),
            Retry = retry,
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
