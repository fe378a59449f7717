using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary>
/// The zephyr transport (spec/zephyr.md §7): both peers dial out to a Zephyr relay, exchange their
/// zids by CMESSAGE/SMESSAGE, bind, and run mutually authenticated TLS 1.3 (pinned certificates)
/// over the joined stream, with plain's preamble inside.
/// </summary>
public sealed class ZephyrTransport : IPluggableTransport
{
    public string Name => "zephyr";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new ZephyrClient(context, ZephyrClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new ZephyrServer(context, ZephyrServerOptions.Parse(context.Options));
}
