using PtHost.Contract;

namespace PtHost.Transports.Jet;

/// <summary>
/// The jet transport (spec/jet.md §7): the server makes an association at a JET relay and accepts
/// on every candidate (plus, optionally, a direct one of its own); the client learns the candidates
/// by CMESSAGE/SMESSAGE, races them all and keeps the first that completes TLS 1.3 with the pinned
/// server; plain's preamble runs inside.
/// </summary>
public sealed class JetTransport : IPluggableTransport
{
    public string Name => "jet";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new JetClient(context, JetClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new JetServer(context, JetServerOptions.Parse(context.Options));
}
