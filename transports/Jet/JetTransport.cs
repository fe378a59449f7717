using PtHost.Contract;

namespace PtHost.Transports.Jet;

/// <summary>
/// The jet transport (spec/jet.md §7): the server makes an association at a JET relay and accepts
/// on every candidate (plus, optionally, a direct one of its own); the client learns the candidates
/// by CMESSAGE/SMESSAGE, races them all and keeps the first that completes TLS 1.3 with the pinned
/// server; the session preamble (spec/session.md) runs inside.
/// </summary>
public sealed class JetTransport : IPluggableTransport
{
    public string Name => "jet";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new JetClient(RequireSignals(context), JetClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new JetServer(RequireSignals(context), JetServerOptions.Parse(context.Options));

    /// <summary>The client's offer and the server's candidates travel as signals (spec/jet.md §7): no channel, no jet.</summary>
    private static TransportEnvironment RequireSignals(TransportEnvironment context) => context.Signals.Available ? context
        : throw new TransportOptionsException("jet needs the CMESSAGE/SMESSAGE signal channel to exchange the association and its candidates, and PT 1.0 (Tor) has none; run pthost with a PT 2.0 JSON configuration");
}
