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
    bool AnyRelay = false)
{
    public static ZephyrServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, ZephyrOptions.Path);
        r.RejectUnknown("relay", "relays", "anyRelay", "clientPins", "certificate", "key", "pkcs12", "signalTimeout", "tlsTimeout");
        bool anyRelay = r.Bool("anyRelay", false);
        var relays = ZephyrOptions.Relays(r);
        if (anyRelay && relays is not null) throw r.Fail("anyRelay", "true excludes \"relay\" and \"relays\"");
        var pins = PinnedTlsOptions.ReadClientPins(r);
        return new(relays, pins, ZephyrOptions.Certificate(r, "server"), ZephyrOptions.Seconds(r, "signalTimeout", ZephyrDefaults.SignalTimeout),
            ZephyrOptions.Seconds(r, "tlsTimeout", ZephyrDefaults.TlsTimeout), anyRelay);
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
