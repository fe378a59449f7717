using System.Net;

namespace PtHost.Contract;

/// <summary>
/// Outgoing connections for transports and the host. The host's implementation applies timeouts,
/// the upstream proxy and outbound bind addresses, and maps failures to <see cref="ConnectFailure"/>.
/// </summary>
public interface INetworkDialer
{
    /// <summary>Connects over TCP; throws <see cref="TransportConnectException"/>.</summary>
    ValueTask<Stream> ConnectTcpAsync(Destination destination, CancellationToken cancellationToken);
}

/// <summary>
/// Datagram sessions (the TURN front end, spec/turn.md). A client factory that also implements this
/// carries UDP natively; otherwise the host frames datagrams inside a stream (2-byte big-endian length).
/// </summary>
public interface IDatagramClientFactory
{
    /// <summary>Opens a datagram association towards the server process.</summary>
    ValueTask<IDatagramSession> OpenDatagramSessionAsync(ConnectRequest request, CancellationToken cancellationToken);
}

/// <summary>An association that carries datagrams for several peers.</summary>
public interface IDatagramSession : IAsyncDisposable
{
    /// <summary>The largest payload <see cref="SendAsync"/> accepts.</summary>
    int MaxDatagramSize { get; }

    /// <summary>Sends one datagram for <paramref name="peer"/>; may drop it under congestion.</summary>
    ValueTask SendAsync(IPEndPoint peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken);

    /// <summary>Receives the next datagram into <paramref name="buffer"/>.</summary>
    ValueTask<(IPEndPoint Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken);
}

/// <summary>
/// A transport stream whose write side can end while its read side goes on (a TCP half-close).
/// The host calls it when the application side ends; streams that are a <see cref="System.Net.Sockets.NetworkStream"/> need not implement it.
/// </summary>
public interface IHalfClosable
{
    /// <summary>Ends the write direction; reads continue.</summary>
    void ShutdownWrite();
}
