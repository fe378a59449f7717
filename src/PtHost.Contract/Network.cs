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
/// A client factory with a datagram carrier of its own (spec/turn.md §5: asport's UDP to the public
/// port, RUD datagram streams); the host prefers it over a stream carrier for its TURN front end.
/// </summary>
public interface IDatagramClientFactory
{
    /// <summary>
    /// Opens a UDP association towards the server process (<see cref="ConnectRequest.Kind"/> is
    /// <see cref="SessionKind.Datagram"/>). Throws <see cref="TransportConnectException"/>.
    /// </summary>
    ValueTask<IAssociation> OpenAssociationAsync(ConnectRequest request, CancellationToken cancellationToken);
}

/// <summary>
/// Marks a client factory whose streams are stream carriers (spec/turn.md §5): it passes
/// <see cref="ConnectRequest.Kind"/> through to its server side in the session preamble
/// (<see cref="SessionPreamble.RequestAsync"/>), so the host carries associations' frames in its
/// streams. The host opens a TURN listener only for transports that implement this or
/// <see cref="IDatagramClientFactory"/>.
/// </summary>
public interface IStreamCarrier;

/// <summary>
/// The client process's end of a UDP association (spec/turn.md §5): datagrams to and from several
/// peers, each checked by the server process. Calls of each method are not concurrent with
/// themselves (one sender, one receiver).
/// </summary>
public interface IAssociation : IAsyncDisposable
{
    /// <summary>The largest payload <see cref="SendAsync"/> accepts.</summary>
    int MaxDatagramSize { get; }

    /// <summary>Where the server process sends from (the TURN relayed address); unspecified if not known.</summary>
    PeerAddress RelayedAddress { get; }

    /// <summary>
    /// Sends one datagram for <paramref name="peer"/>; may drop it under congestion. The payload must be
    /// copied (or sent) before the call returns: callers reuse the buffer at once and do not wait for the task.
    /// </summary>
    ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken);

    /// <summary>
    /// Asks the server process whether <paramref name="peer"/> may be reached (spec/turn.md §5.3);
    /// true when it may. Used before a TURN permission is installed.
    /// </summary>
    ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken);

    /// <summary>
    /// Receives the next datagram from a peer into <paramref name="buffer"/>. Length -1 means the
    /// association ended (the server process closed it).
    /// </summary>
    ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken);
}

/// <summary>
/// An IPv4 or IPv6 address and a UDP port, as a value (no allocation). IPv4-mapped IPv6 addresses
/// stay IPv6 here; policies that must see through them call <see cref="Unmapped"/>.
/// </summary>
public readonly struct PeerAddress : IEquatable<PeerAddress>
{
    private readonly ulong _high, _low;

    private PeerAddress(ulong high, ulong low, int port, bool isIPv4)
    {
        _high = high;
        _low = low;
        Port = port;
        IsIPv4 = isIPv4;
    }

    /// <summary>The port, 0–65535.</summary>
    public int Port { get; }

    /// <summary>True for IPv4 (4 address bytes), false for IPv6 (16).</summary>
    public bool IsIPv4 { get; }

    /// <summary>False for the default value.</summary>
    public bool IsValid => _defined;

    private readonly bool _defined = true;

    /// <summary>4 or 16.</summary>
    public int AddressLength => IsIPv4 ? 4 : 16;

    /// <summary>From 4 (IPv4) or 16 (IPv6) address bytes in network order.</summary>
    public static PeerAddress FromBytes(ReadOnlySpan<byte> address, int port)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(port);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        if (address.Length == 4) return new(0, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(address), port, true);
        if (address.Length == 16)
            return new(System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(address),
                System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(address[8..]), port, false);
        throw new ArgumentException("an address is 4 or 16 bytes", nameof(address));
    }

    /// <summary>From an endpoint (IPv4 or IPv6).</summary>
    public static PeerAddress From(IPEndPoint endPoint)
    {
        Span<byte> bytes = stackalloc byte[16];
        endPoint.Address.TryWriteBytes(bytes, out int n);
        return FromBytes(bytes[..n], endPoint.Port);
    }

    /// <summary>From a Linux <c>sockaddr_in</c> / <c>sockaddr_in6</c> as a receive call filled it (port in network order).</summary>
    public static PeerAddress From(SocketAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        var bytes = address.Buffer.Span;
        int port = System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(bytes[2..]);
        return address.Family == System.Net.Sockets.AddressFamily.InterNetwork
            ? FromBytes(bytes.Slice(4, 4), port)
            : FromBytes(bytes.Slice(8, 16), port);
    }

    /// <summary>Writes the 4 or 16 address bytes; returns the count.</summary>
    public int WriteAddress(Span<byte> destination)
    {
        if (IsIPv4)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)_low);
            return 4;
        }
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(destination, _high);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(destination[8..], _low);
        return 16;
    }

    /// <summary>The same address with another port.</summary>
    public PeerAddress WithPort(int port) => new(_high, _low, port, IsIPv4);

    /// <summary>IPv4 for an IPv4-mapped IPv6 address (<c>::ffff:a.b.c.d</c>); itself otherwise.</summary>
    public PeerAddress Unmapped() =>
        !IsIPv4 && _high == 0 && (_low >> 32) == 0xffff ? new(0, (uint)_low, Port, true) : this;

    /// <summary>The address as an <see cref="IPAddress"/> (allocates).</summary>
    public IPAddress ToIPAddress()
    {
        Span<byte> bytes = stackalloc byte[16];
        return new IPAddress(bytes[..WriteAddress(bytes)]);
    }

    /// <summary>The endpoint (allocates).</summary>
    public IPEndPoint ToEndPoint() => new(ToIPAddress(), Port);

    /// <summary>True when both the address and the port are equal (the family too).</summary>
    public bool Equals(PeerAddress other) => _high == other._high && _low == other._low && Port == other.Port && IsIPv4 == other.IsIPv4;

    /// <summary>True when the addresses are equal, ignoring the port (TURN permissions, RFC 5766 §8).</summary>
    public bool SameAddress(PeerAddress other) => _high == other._high && _low == other._low && IsIPv4 == other.IsIPv4;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is PeerAddress p && Equals(p);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(_high, _low, Port, IsIPv4);

    /// <summary>Equality.</summary>
    public static bool operator ==(PeerAddress a, PeerAddress b) => a.Equals(b);

    /// <summary>Inequality.</summary>
    public static bool operator !=(PeerAddress a, PeerAddress b) => !a.Equals(b);

    /// <summary><c>ip:port</c>, IPv6 in brackets.</summary>
    public override string ToString() => ToEndPoint().ToString();
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

/// <summary>
/// A transport stream that can end abortively, so that the far end sees an error rather than a
/// clean end of stream (the counterpart of a TCP reset: QUIC and RUD RESET_STREAM, a TLS
/// connection's socket closed with RST). The host calls it when the other side of a session
/// failed (spec/ipc.md §7); a stream without it is only disposed.
/// </summary>
public interface IAbortable
{
    /// <summary>Ends both directions at once with an error the peer can see; disposal follows.</summary>
    void Abort();
}
