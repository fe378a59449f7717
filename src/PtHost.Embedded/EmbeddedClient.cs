using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Udp;

namespace PtHost.Embedded;

/// <summary>
/// PtHost's client side inside the application (spec/adapters.md §5.8): no pthost process, no SOCKS listener.
/// <see cref="ConnectAsync"/> returns the transport's own stream, after the session preamble (spec/session.md)
/// that the transport's client side exchanges with the server process.
/// </summary>
public sealed class EmbeddedClient : EmbeddedInstance
{
    private readonly Dictionary<string, IClientFactory> _factories = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _errors = new(StringComparer.Ordinal);
    private readonly List<string> _transports = [];
    private long _session;

    private EmbeddedClient(JObject config, ILoggerFactory? loggers) : base(server: false, config, loggers) { }

    public override IReadOnlyList<string> Transports => _transports;

    /// <summary>Transports that did not start and why (what pthost writes as CMETHOD-ERROR).</summary>
    public IReadOnlyDictionary<string, string> TransportErrors => _errors;

    /// <summary>Starts the client transports of pthost's client document (<c>transports</c>, <c>options</c>, <c>state</c>).</summary>
    public static async Task<EmbeddedClient> StartAsync(JObject config, ILoggerFactory? loggers = null, CancellationToken ct = default)
    {
        var client = new EmbeddedClient(config, loggers);
        try
        {
            foreach (var name in (config["transports"] as JArray ?? []).Select(t => (string)t!))
            {
                try
                {
                    var factory = Create(name).CreateClientFactory(client.Environment(name, new TransportCounters()));
                    client.Owned.Add(factory);
                    if (factory is IStartableClientFactory startable) await startable.StartAsync(ct).ConfigureAwait(false);
                    client._factories[name] = factory;
                    client._transports.Add(name);
                }
                catch (TransportOptionsException e)
                {
                    client._errors[name] = e.Message;
                }
            }
            if (client._transports.Count == 0)
                throw new TransportOptionsException("no transport started: " + string.Join("; ", client._errors.Select(e => $"{e.Key}: {e.Value}")));
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// A connection over <paramref name="transport"/> to <paramref name="destination"/> with these per-connection
    /// <paramref name="settings"/> (spec/ipc.md §5.3): the transport's stream, in process. Fails with
    /// <see cref="SettingsException"/> or <see cref="TransportConnectException"/> (its <c>Failure</c> is the SOCKS reply pthost would send).
    /// </summary>
    public async Task<Stream> ConnectAsync(string transport, JObject? settings, Destination destination, CancellationToken ct = default)
    {
        var factory = Factory(transport);
        var counters = Counters[transport];
        object? parsed = factory.ParseSettings(settings is null ? ConnectionSettings.Empty : new ConnectionSettings(settings, SettingsSource.Json));
        try
        {
            var stream = await factory.ConnectAsync(new ConnectRequest(destination, parsed, Interlocked.Increment(ref _session)), ct).ConfigureAwait(false);
            counters.SessionOpened();
            return new CountedStream(stream, counters, counters.SessionClosed);
        }
        catch
        {
            counters.SessionFailed();
            throw;
        }
    }

    public Task<Stream> ConnectAsync(string transport, JObject? settings, string host, int port, CancellationToken ct = default) =>
        ConnectAsync(transport, settings, new Destination(host, port), ct);

    /// <summary>
    /// A UDP client over <paramref name="transport"/>'s own association (spec/turn.md §5.1: its datagram carrier, or
    /// frames in one of its streams), with no TURN listener or loopback hop. <see cref="NotSupportedException"/> when
    /// the transport cannot carry UDP; <see cref="TransportConnectException"/> when the association cannot be opened.
    /// </summary>
    public async Task<EmbeddedUdpClient> CreateUdpClientAsync(string transport, CancellationToken ct = default)
    {
        var factory = Factory(transport);
        if (!UdpCarrier.CanCarry(factory)) throw new NotSupportedException($"transport {transport} cannot carry UDP (spec/turn.md §5.1)");
        var counters = Counters[transport];
        try
        {
            var association = await UdpCarrier.OpenAsync(factory, Interlocked.Increment(ref _session), ct).ConfigureAwait(false);
            counters.SessionOpened();
            return new EmbeddedUdpClient(association, counters);
        }
        catch
        {
            counters.SessionFailed();
            throw;
        }
    }

    private IClientFactory Factory(string transport) =>
        _factories.TryGetValue(transport, out var factory) ? factory
        : throw (_errors.TryGetValue(transport, out var why)
            ? new TransportOptionsException($"transport {transport} did not start: {why}")
            : new ArgumentException($"no transport \"{transport}\" in this host", nameof(transport)));
}
