using System.Net;
using System.Net.Sockets;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// Direct TCP connections with a timeout, failures mapped to SOCKS reply codes (spec/ipc.md §5.6).
/// Names are resolved and each address tried in turn.
/// </summary>
public sealed class DirectDialer : INetworkDialer
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);
    private readonly TimeSpan _timeout;

    public DirectDialer(TimeSpan? timeout = null) => _timeout = timeout ?? DefaultTimeout;

    public ValueTask<Stream> ConnectTcpAsync(Destination destination, CancellationToken cancellationToken) =>
        ConnectAsync(destination, null, cancellationToken);

    /// <summary>Connects to the first reachable address of <paramref name="destination"/> that <paramref name="filter"/> accepts.</summary>
    public async ValueTask<Stream> ConnectAsync(Destination destination, Func<IPAddress, bool>? filter, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_timeout);
        try
        {
            IPAddress[] addresses = destination.Address is { } a ? [a] : await ResolveAsync(destination.Host, timeout.Token);
            if (filter is not null)
            {
                addresses = Array.FindAll(addresses, a => filter(a));
                if (addresses.Length == 0)
                    throw new TransportConnectException(ConnectFailure.NotAllowed, $"{destination} is not in the allow list");
            }
            SocketException? last = null;
            foreach (var address in addresses)
            {
                var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
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
