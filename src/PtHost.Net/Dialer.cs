using System.Net;
using System.Net.Sockets;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// Direct TCP connections with a timeout, failures mapped to SOCKS reply codes (spec/ipc.md §5.6).
/// Names are resolved and each address tried in turn. With <see cref="OutboundBindAddresses"/>, the
/// local address is bound before connecting, except towards loopback destinations (pt-spec
/// TOR_PT_OUTBOUND_BIND_ADDRESS_V4/_V6; spec/external.md §3).
/// </summary>
public sealed class DirectDialer : INetworkDialer
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);
    private readonly TimeSpan _timeout;

    public DirectDialer(TimeSpan? timeout = null, OutboundBindAddresses? bind = null)
    {
        _timeout = timeout ?? DefaultTimeout;
        Bind = bind ?? OutboundBindAddresses.None;
    }

    /// <summary>The local addresses bound before connecting (none by default).</summary>
    public OutboundBindAddresses Bind { get; }

    /// <summary>The connect limit.</summary>
    public TimeSpan Timeout => _timeout;

    public ValueTask<Stream> ConnectTcpAsync(Destination destination, CancellationToken cancellationToken) =>
        ConnectAsync(destination, null, cancellationToken);

    /// <summary>
    /// Connects to the first reachable address of <paramref name="destination"/> that <paramref name="refuse"/>
    /// does not refuse (it returns null for an address that may be reached, else why not). Every resolved
    /// address is judged before any connect, so a name cannot lead to a refused address (spec/ipc.md §3.4).
    /// </summary>
    public async ValueTask<Stream> ConnectAsync(Destination destination, Func<IPAddress, string?>? refuse, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_timeout);
        try
        {
            IPAddress[] addresses = destination.Address is { } a ? [a] : await ResolveAsync(destination.Host, timeout.Token);
            if (refuse is not null)
            {
                var admitted = new List<IPAddress>(addresses.Length);
                string? why = null;
                foreach (var candidate in addresses)
                {
                    if (refuse(candidate) is { } reason) why ??= reason;
                    else admitted.Add(candidate);
                }
                if (admitted.Count == 0)
                    throw new TransportConnectException(ConnectFailure.NotAllowed, $"{destination} refused: {why}");
                addresses = [.. admitted];
            }
            SocketException? last = null;
            foreach (var address in addresses)
            {
                var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    if (Bind.For(address) is { } local)
                    {
                        try { socket.Bind(new IPEndPoint(local, 0)); }
                        catch (SocketException e)
                        {
                            throw new TransportConnectException(ConnectFailure.General,
                                $"cannot bind the outbound address {local} to connect to {destination}: {e.SocketErrorCode}", e);
                        }
                    }
                    await socket.ConnectAsync(new IPEndPoint(address, destination.Port), timeout.Token);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch (SocketException e)
                {
                    socket.Dispose();
                    last = e;
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            }
            throw Map(last!, destination);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TransportConnectException(ConnectFailure.TimedOut, $"connecting to {destination} took longer than {_timeout.TotalSeconds:0} s");
        }
    }

    private static async Task<IPAddress[]> ResolveAsync(string host, CancellationToken ct)
    {
        try
        {
            var found = await Dns.GetHostAddressesAsync(host, ct);
            if (found.Length == 0) throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{host} has no addresses");
            return found;
        }
        catch (SocketException e)
        {
            throw new TransportConnectException(ConnectFailure.HostUnreachable, $"cannot resolve {host}: {e.SocketErrorCode}", e);
        }
    }

    public static TransportConnectException Map(SocketException e, Destination destination)
    {
        var failure = e.SocketErrorCode switch
        {
            SocketError.ConnectionRefused => ConnectFailure.ConnectionRefused,
            SocketError.NetworkUnreachable or SocketError.NetworkDown => ConnectFailure.NetworkUnreachable,
            SocketError.HostUnreachable or SocketError.HostDown or SocketError.HostNotFound or SocketError.NoData
                or SocketError.AddressNotAvailable => ConnectFailure.HostUnreachable,
            SocketError.TimedOut => ConnectFailure.TimedOut,
            SocketError.AccessDenied => ConnectFailure.NotAllowed,
            _ => ConnectFailure.General,
        };
        return new TransportConnectException(failure, $"connecting to {destination}: {e.SocketErrorCode}", e);
    }
}

/// <summary>
/// Local addresses that outgoing connections are bound to (pt-spec TOR_PT_OUTBOUND_BIND_ADDRESS_V4
/// and _V6): the one matching the destination's family, never for loopback destinations.
/// </summary>
public sealed record OutboundBindAddresses(IPAddress? V4, IPAddress? V6)
{
    /// <summary>No binding.</summary>
    public static OutboundBindAddresses None { get; } = new(null, null);

    /// <summary>The address to bind before connecting to <paramref name="destination"/>, or null.</summary>
    public IPAddress? For(IPAddress destination)
    {
        if (IPAddress.IsLoopback(destination)) return null;
        if (destination.IsIPv4MappedToIPv6) return V4?.MapToIPv6();
        return destination.AddressFamily == AddressFamily.InterNetwork ? V4 : V6;
    }

    /// <summary>
    /// Parses TOR_PT_OUTBOUND_BIND_ADDRESS_V4: an IPv4 strict dotted quad (null or empty: none).
    /// Throws <see cref="FormatException"/> with a message for ENV-ERROR.
    /// </summary>
    public static IPAddress? ParseV4(string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        return Destination.IsStrictIPv4(text) ? IPAddress.Parse(text)
            : throw new FormatException($"outbound bind address \"{text}\" is not an IPv4 address");
    }

    /// <summary>
    /// Parses TOR_PT_OUTBOUND_BIND_ADDRESS_V6: an IPv6 literal in brackets (<c>[2001:db8::4]</c>);
    /// brackets are optional here. Null or empty: none. Throws <see cref="FormatException"/>.
    /// </summary>
    public static IPAddress? ParseV6(string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        string inner = text.Length >= 2 && text[0] == '[' && text[^1] == ']' ? text[1..^1] : text;
        return !inner.Contains('%') && IPAddress.TryParse(inner, out var a) && a.AddressFamily == AddressFamily.InterNetworkV6
            ? a : throw new FormatException($"outbound bind address \"{text}\" is not an IPv6 address ([addr])");
    }
}
