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
        var r = OptionsReader.For(options, ZephyrOptions.Path);
        if (r.IsAbsent) throw r.Fail("is required: an object with \"relay\", \"serverPin\", \"certificate\" and \"key\" (pthost generate-config zephyr)");
        r.RejectUnknown("relay", "relays", "serverPin", "certificate", "key", "pkcs12", "signalTimeout", "tlsTimeout");
        var relays = ZephyrOptions.Relays(r) ?? throw r.Fail("relay", "is required (or \"relays\")");
        byte[] pin = PinnedTlsOptions.ReadServerPin(r);
        var cert = ZephyrOptions.Certificate(r, "client") ?? throw r.Fail("certificate", "is required: \"certificate\" and \"key\" (PEM), or \"pkcs12\"");
        return new(relays, pin, cert, ZephyrOptions.Seconds(r, "signalTimeout", ZephyrDefaults.SignalTimeout), ZephyrOptions.Seconds(r, "tlsTimeout", ZephyrDefaults.TlsTimeout));
    }
}

/// <summary>
/// Server options (spec/zephyr.md §7.1). <see cref="Certificate"/> null: the state directory's.
/// <see cref="Relays"/> null with <see cref="AnyRelay"/> false: the server cannot serve (it joins
/// only relays it was told about, unless told to join any).
/// </summary>
internal sealed record ZephyrServerOptions(
    IReadOnlyList<Destination>? Relays, IReadOnlyList<byte[]> ClientPins, X509Certificate2? Certificate, TimeSpan SignalTimeout, TimeSpan TlsTimeout,
    bool AnyRelay = false, ZephyrRelayInstances? RelayInstances = null)
{
    public static ZephyrServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, ZephyrOptions.Path);
        r.RejectUnknown("relay", "relays", "anyRelay", "relayInstances", "clientPins", "certificate", "key", "pkcs12", "signalTimeout", "tlsTimeout");
        bool anyRelay = r.Bool("anyRelay", false);
        var relays = ZephyrOptions.Relays(r);
        if (anyRelay && relays is not null) throw r.Fail("anyRelay", "true excludes \"relay\" and \"relays\"");
        var instances = ZephyrRelayInstances.Parse(r.Object("relayInstances"), relays);
        var pins = PinnedTlsOptions.ReadClientPins(r);
        return new(relays, pins, ZephyrOptions.Certificate(r, "server"), ZephyrOptions.Seconds(r, "signalTimeout", ZephyrDefaults.SignalTimeout),
            ZephyrOptions.Seconds(r, "tlsTimeout", ZephyrDefaults.TlsTimeout), anyRelay, instances);
    }
}

internal static class ZephyrDefaults
{
    public static readonly TimeSpan SignalTimeout = TimeSpan.FromSeconds(20);
    public static readonly TimeSpan TlsTimeout = TimeSpan.FromSeconds(10);
    /// <summary>The relay's default peer timeout (§4.3): how long a server waits for its client to bind.</summary>
    public static readonly TimeSpan RelayPeerTimeout = TimeSpan.FromSeconds(30);
}

/// <summary>What both sides' options share (spec/zephyr.md §7.1).</summary>
internal static class ZephyrOptions
{
    public const string Path = "options.zephyr";

    public static TimeSpan Seconds(OptionsReader r, string key, TimeSpan fallback) => r.Seconds(key, fallback, max: 3600);

    /// <summary><c>relay</c> (one "host:port") or <c>relays</c> (a non-empty array of them); null when neither is given.</summary>
    public static IReadOnlyList<Destination>? Relays(OptionsReader r)
    {
        if (r.Has("relay") && r.Has("relays")) throw r.Fail("relays", "excludes \"relay\"");
        if (r.Destination("relay") is { } one) return [one];
        return r.List("relays", t => Destination.TryParse(t, out var d) && d.Port != 0 ? d : null, "must be \"host:port\"", nonEmpty: true);
    }

    /// <summary>The side's certificate: <c>certificate</c> and <c>key</c> (PEM), or <c>pkcs12</c>; null when none is given.</summary>
    public static X509Certificate2? Certificate(OptionsReader r, string side) => PinnedTlsOptions.ReadCertificate(r, side, allowPkcs12: true);
}

/// <summary>
/// <c>relayInstances</c> (spec/zephyr.md §8.6, direct joins): for a relay address (a balancer), the direct
/// "host:port" of each cluster instance behind it, by instance number 1–15.
/// </summary>
internal sealed class ZephyrRelayInstances
{
    /// <summary>Per balancer ("host:port" text, case-insensitive): index = instance number, null = no entry.</summary>
    private readonly Dictionary<string, Destination?[]> _byRelay;

    private ZephyrRelayInstances(Dictionary<string, Destination?[]> byRelay) => _byRelay = byRelay;

    /// <summary>The option, checked against the server's relay list (every key must be one of them); null when absent.</summary>
    public static ZephyrRelayInstances? Parse(OptionsReader r, IReadOnlyList<Destination>? relays)
    {
        if (r.IsAbsent) return null;
        var byRelay = new Dictionary<string, Destination?[]>(StringComparer.OrdinalIgnoreCase);
        foreach (string key in r.Keys)
        {
            if (!Destination.TryParse(key, out var balancer) || balancer.Port == 0)
                throw r.Fail(key, "must be a relay address \"host:port\" (the balancer the offers name)");
            if (relays is not null && !relays.Any(a => string.Equals(a.ToString(), balancer.ToString(), StringComparison.OrdinalIgnoreCase)))
                throw r.Fail(key, "is not one of this server's \"relay\"/\"relays\"");
            var map = r.Object(key);
            if (map.IsAbsent) throw r.Fail(key, "must be an object mapping instance numbers (1 to 15) to \"host:port\"");
            var direct = new Destination?[16];
            int entries = 0;
            foreach (string n in map.Keys)
            {
                if (n.Length is < 1 or > 2 || !n.All(char.IsAsciiDigit) || int.Parse(n, System.Globalization.CultureInfo.InvariantCulture) is < 1 or > 15 || n[0] == '0')
                    throw map.Fail(n, "must be an instance number from 1 to 15");
                direct[int.Parse(n, System.Globalization.CultureInfo.InvariantCulture)] = map.Destination(n) ?? throw map.Fail(n, "must be \"host:port\", not null");
                entries++;
            }
            if (entries == 0) throw r.Fail(key, "must not be empty");
            byRelay[balancer.ToString()] = direct;
        }
        return new(byRelay);
    }

    /// <summary>The direct address of the instance numbered <paramref name="tag"/> behind <paramref name="relay"/>, if listed.</summary>
    public Destination? Direct(Destination relay, int tag) =>
        tag is >= 1 and <= 15 && _byRelay.TryGetValue(relay.ToString(), out var direct) ? direct[tag] : null;

    /// <summary>Whether <paramref name="relay"/> is one of the listed direct addresses (they count as allowed relays, §8.6).</summary>
    public bool Lists(Destination relay)
    {
        string text = relay.ToString();
        foreach (var direct in _byRelay.Values)
            foreach (var d in direct)
                if (d is not null && string.Equals(d.ToString(), text, StringComparison.OrdinalIgnoreCase)) return true;
        return false;
    }
}
