using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// How a client transport carries a UDP association (spec/turn.md §5.1): its own datagram carrier
/// (<see cref="IDatagramClientFactory"/>) when it has one, else frames in one of its streams
/// (<see cref="IStreamCarrier"/>, spec/turn.md §5.2). The TURN front end and the in-process host
/// (spec/adapters.md §5.8) open associations through here.
/// </summary>
public static class UdpCarrier
{
    /// <summary>Whether <paramref name="factory"/> can carry UDP at all.</summary>
    public static bool CanCarry(IClientFactory factory) => factory is IDatagramClientFactory or IStreamCarrier;

    /// <summary>Opens association <paramref name="session"/> towards the server process; throws <see cref="TransportConnectException"/>.</summary>
    public static ValueTask<IAssociation> OpenAsync(IClientFactory factory, long session, CancellationToken ct) =>
        OpenAsync(factory, session, server: null, ct);

    /// <summary>
    /// Opens association <paramref name="session"/> towards <paramref name="server"/> (the transparent modes' <c>target</c>,
    /// spec/ipc.md §12.4), or, when null, wherever the transport finds its server; throws <see cref="TransportConnectException"/>.
    /// </summary>
    public static async ValueTask<IAssociation> OpenAsync(IClientFactory factory, long session, Destination? server, CancellationToken ct)
    {
        if (!CanCarry(factory)) throw new InvalidOperationException("the transport cannot carry UDP (spec/turn.md §5.1)");
        var request = new ConnectRequest(server ?? new Destination("0.0.0.0", 0), factory.ParseSettings(ConnectionSettings.Empty), session, SessionKind.Datagram);
        if (factory is IDatagramClientFactory native) return await native.OpenAssociationAsync(request, ct).ConfigureAwait(false);
        var stream = await factory.ConnectAsync(request, ct).ConfigureAwait(false);
        return await StreamAssociation.StartAsync(stream, ct).ConfigureAwait(false);
    }
}
