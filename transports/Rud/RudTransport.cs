using PtHost.Contract;

namespace PtHost.Transports.Rud;

/// <summary>
/// The rud transport (spec/rud.md §12): the server process serves RUD streams on one UDP socket;
/// the client process keeps one connection per server and opens one stream per session, with
/// the session preamble (spec/session.md) inside each stream.
/// </summary>
public sealed class RudTransport : IPluggableTransport
{
    public string Name => "rud";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new RudClient(context, RudClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new RudServer(context, RudServerOptions.Parse(context.Options));
}
