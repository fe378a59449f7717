using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary>
/// The zephyr transport (spec/zephyr.md §7): both peers dial out to a Zephyr relay, exchange their
/// zids by CMESSAGE/SMESSAGE, bind, and run mutually authenticated TLS 1.3 (pinned certificates)
/// over the joined stream, with the session preamble (spec/session.md) inside.
/// </summary>
public sealed class ZephyrTransport : IPluggableTransport
{
    public string Name => "zephyr";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new ZephyrClient(RequireSignals(context), ZephyrClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new ZephyrServer(RequireSignals(context), ZephyrServerOptions.Parse(context.Options));

    /// <summary>Both peers learn each other's zid only through signals (spec/zephyr.md §7): no channel, no zephyr.</summary>
    private static TransportEnvironment RequireSignals(TransportEnvironment context) => context.Signals.Available ? context
        : throw new TransportOptionsException("zephyr needs the CMESSAGE/SMESSAGE signal channel to exchange relay identifiers, and PT 1.0 (Tor) has none; run pthost with a PT 2.0 JSON configuration");
}
