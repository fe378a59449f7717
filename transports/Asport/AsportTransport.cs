using PtHost.Contract;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>
/// The asport transport (spec/asport.md §6). The server process is an ASPORT client: it
/// registers with an ASPORT server and announces the public address it was given (SMETHOD and
/// an "asport.address" SMESSAGE). The client process reaches that address over TCP; every
/// session starts with the session preamble (spec/session.md), so bound and free servers both work. TURN allocations
/// reach the public UDP port directly when the server bound one (spec/asport.md §6.2).
/// </summary>
public sealed class AsportTransport : IPluggableTransport
{
    public const string AddressSignal = "asport.address";

    public string Name => "asport";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new AsportClient(context, AsportClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context)
    {
        // QUIC runs in the server process only: refuse early, with the reason, when it cannot.
        if (QuicLibrary.UnavailableReason is { } why) throw new TransportOptionsException(why);
        return new AsportServer(context, AsportServerOptions.Parse(context.Options));
    }
}
