using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Net.Signals;
using PtHost.Net.Tls;

namespace PtHost.Hosting;

/// <summary>
/// What a bridge line carries for a transport signalling through a rendezvous (spec/rendezvous.md §7.3–§7.4):
/// the route's keys, the transport's own non-secret client options, and — for the pinned-TLS
/// transports — a client certificate derived from the secret instead of a certificate of its own.
/// </summary>
public static class BridgeLine
{
    /// <summary>Transports whose server admits clients by certificate pin (spec/zephyr.md §7.4, spec/jet.md §7.4).</summary>
    private static readonly string[] PinnedTlsTransports = ["zephyr", "jet"];

    /// <summary>Server options a client needs, copied into ARGS (§7.3): zephyr's relay.</summary>
    private static readonly Dictionary<string, string[]> CopiedServerOptions = new(StringComparer.Ordinal) { ["zephyr"] = ["relay"] };

    /// <summary>The client certificate every holder of the secret presents (§3.3).</summary>
    public static X509Certificate2 ClientCertificate(RendezvousKeys keys) => DerivedCertificate.Create(keys.Derive("client key", 48), keys.Derive("client serial", 8));

    /// <summary>§7.3: the server's options with the derived client certificate's pin added to <c>clientPins</c> (zephyr, jet).</summary>
    public static JToken? ServerOptions(string transport, JToken? options, RendezvousEndpoint endpoint)
    {
        if (!PinnedTlsTransports.Contains(transport)) return options;
        var o = options switch { null => new JObject(), JObject j => (JObject)j.DeepClone(), _ => null };
        if (o is null) return options; // the transport reports the wrong type
        using var cert = ClientCertificate(endpoint.Keys);
        string pin = PinnedTls.FormatPin(PinnedTls.Pin(cert));
        var pins = o["clientPins"] as JArray ?? [];
        if (o["clientPins"] is null or JArray) { pins.Add(pin); o["clientPins"] = pins; }
        return o;
    }

    /// <summary>§7.3: SMETHOD ARGS: the transport's own, the route's, and the server options a client needs.</summary>
    public static IReadOnlyDictionary<string, string> ServerArgs(string transport, IReadOnlyDictionary<string, string> args, JToken? options, RendezvousEndpoint endpoint)
    {
        var result = new Dictionary<string, string>(args, StringComparer.Ordinal)
        {
            ["rendezvous"] = endpoint.Url.OriginalString,
            ["secret"] = RendezvousKeys.Base64Url(endpoint.Keys.Secret),
        };
        if (endpoint.Pin is { } pin) result["rendezvous-pin"] = PinnedTls.FormatPin(pin);
        if (CopiedServerOptions.TryGetValue(transport, out var keys) && options is JObject o)
            foreach (string k in keys)
                if (o[k] is { Type: JTokenType.String } v) result[k] = (string)v!;
        return result;
    }

    /// <summary>
    /// §7.4: the client options a bridge line's arguments give: every argument but the route's and
    /// <c>destination</c>, with <c>pin</c> read as <c>serverPin</c>; with a <c>pin</c>, the derived certificate.
    /// </summary>
    public static JObject ClientOptions(JObject args, RendezvousEndpoint endpoint)
    {
        var o = new JObject();
        foreach (var p in args.Properties())
        {
            if (TorEnvironmentKeys.Contains(p.Name) || p.Name == "destination") continue;
            o[p.Name == "pin" ? "serverPin" : p.Name] = p.Value.DeepClone();
        }
        if (o.ContainsKey("serverPin"))
        {
            using var cert = ClientCertificate(endpoint.Keys);
            o["certificate"] = PinnedTls.CertificatePem(cert);
            o["key"] = PinnedTls.KeyPem(cert);
        }
        return o;
    }

    private static readonly string[] TorEnvironmentKeys = PtConfig.RouteKeys;
}

/// <summary>
/// A PT 1.0 client transport (spec/rendezvous.md §7.4): each SOCKS connection's bridge-line arguments
/// may name a rendezvous; the transport's client factory for that bridge line (its options built by
/// <see cref="BridgeLine.ClientOptions"/>, its signals through the route) is made on first use and kept.
/// Connections without a rendezvous use the factory made without options, when the transport has one.
/// </summary>
public sealed class BridgeLineClientFactory : IClientFactory, IStartableClientFactory
{
    private readonly string _name;
    private readonly IPluggableTransport _transport;
    private readonly TransportEnvironment _context;
    private readonly SignalRoutes _routes;
    private readonly INetworkDialer _dialer;
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _log;
    private readonly Dictionary<string, IClientFactory> _bridged = new(StringComparer.Ordinal);
    private readonly IClientFactory? _plain;
    private readonly string? _plainProblem;

    private sealed record Parsed(IClientFactory Factory, object? Settings);

    public BridgeLineClientFactory(string name, IPluggableTransport transport, TransportEnvironment context, SignalRoutes routes, INetworkDialer dialer, ILoggerFactory loggers)
    {
        _name = name;
        _transport = transport;
        _context = context;
        _routes = routes;
        _dialer = dialer;
        _loggers = loggers;
        _log = loggers.CreateLogger("PtHost.Rendezvous");
        try { _plain = transport.CreateClientFactory(context); }
        catch (Exception e) when (e is TransportOptionsException or OptionsException)
        {
            // zephyr and jet cannot work without a route: only bridge lines naming a rendezvous can use them.
            _plainProblem = e.Message;
            _log.LogInformation("transport {Name}: usable only with bridge lines that name a rendezvous ({Problem})", name, e.Message);
        }
    }

    public ValueTask StartAsync(CancellationToken cancellationToken) =>
        _plain is IStartableClientFactory s ? s.StartAsync(cancellationToken) : ValueTask.CompletedTask;

    public object? ParseSettings(ConnectionSettings settings)
    {
        if (settings.GetString("rendezvous") is not { } url)
        {
            if (_plain is null) throw new SettingsException("rendezvous", $"is required: {_name} needs a signal route ({_plainProblem})");
            return new Parsed(_plain, _plain.ParseSettings(settings));
        }
        RendezvousEndpoint endpoint;
        try { endpoint = RendezvousEndpoint.Parse(url, settings.GetString("secret") ?? throw new SettingsException("secret", "is required with rendezvous"), settings.GetString("rendezvous-pin")); }
        catch (FormatException e)
        {
            int colon = e.Message.IndexOf(':', StringComparison.Ordinal);
            throw new SettingsException(e.Message[..colon], e.Message[(colon + 2)..]);
        }
        var options = BridgeLine.ClientOptions(settings.Values, endpoint);
        string key = endpoint.RouteKey + "|" + StrictJson.Write(options);
        IClientFactory factory;
        lock (_bridged)
        {
            if (!_bridged.TryGetValue(key, out factory!))
            {
                if (_bridged.Count >= SignalRoutes.MaxRoutes) throw new SettingsException("rendezvous", $"this process already serves {SignalRoutes.MaxRoutes} bridge lines of {_name}");
                SignalEnvelopes envelopes;
                try { envelopes = _routes.Open(endpoint); }
                catch (InvalidOperationException e) { throw new SettingsException("rendezvous", e.Message); }
                var context = new TransportEnvironment(_name, options, _context.StateDirectory, envelopes.For(_name), _dialer, _loggers, _context.Counters);
                try { factory = _transport.CreateClientFactory(context); }
                catch (Exception e) when (e is TransportOptionsException or OptionsException) { throw new SettingsException("rendezvous", $"the bridge line's arguments do not make a {_name} client: {e.Message}"); }
                _bridged[key] = factory;
                _log.LogInformation("transport {Name}: bridge line through rendezvous channel {Channel} opened", _name, endpoint.Keys.Channel);
            }
        }
        var rest = new JObject();
        if (settings.Values["destination"] is { } d) rest["destination"] = d.DeepClone();
        return new Parsed(factory, factory.ParseSettings(new ConnectionSettings(rest, settings.Source)));
    }

    public ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        if (request.Settings is Parsed p) return p.Factory.ConnectAsync(request with { Settings = p.Settings }, cancellationToken);
        if (_plain is null) throw new TransportConnectException(ConnectFailure.General, $"{_name} needs a bridge line naming a rendezvous ({_plainProblem})");
        return _plain.ConnectAsync(request, cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        List<IClientFactory> all;
        lock (_bridged) all = [.. _bridged.Values];
        if (_plain is not null) all.Add(_plain);
        foreach (var f in all) await f.DisposeAsync().ConfigureAwait(false);
    }
}
