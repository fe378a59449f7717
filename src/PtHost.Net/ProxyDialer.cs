using System.Net;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// Outgoing TCP connections through an upstream proxy (spec/external.md §2): connects to the proxy
/// with <paramref name="direct"/> (so outbound bind addresses apply to the proxy connection), then
/// runs the proxy's handshake for the destination. Host names are passed to the proxy unresolved.
/// The whole attempt (connect and handshake) is limited by <paramref name="timeout"/> (30 s by
/// default) and answered <see cref="ConnectFailure.TimedOut"/> when it runs out.
/// </summary>
public sealed class ProxyDialer(UpstreamProxy proxy, DirectDialer? direct = null, TimeSpan? timeout = null) : INetworkDialer
{
    private readonly DirectDialer _direct = direct ?? new DirectDialer();
    private readonly TimeSpan _timeout = timeout ?? DirectDialer.DefaultTimeout;
    private readonly string _name = proxy.ToString();
    private readonly string _prefix = "upstream proxy " + proxy;

    /// <summary>The dialer that reaches the proxy (its outbound bind addresses apply).</summary>
    public DirectDialer Direct => _direct;

    /// <summary>The proxy every connection goes through.</summary>
    public UpstreamProxy Proxy { get; } = proxy;

    public async ValueTask<Stream> ConnectTcpAsync(Destination destination, CancellationToken cancellationToken)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(_timeout);
        Stream stream;
        try
        {
            stream = await _direct.ConnectTcpAsync(new Destination(Proxy.Server), limit.Token).ConfigureAwait(false);
        }
        catch (TransportConnectException e)
        {
            // The destination was never tried: the proxy itself is unreachable.
            throw new TransportConnectException(e.Failure == ConnectFailure.TimedOut ? ConnectFailure.TimedOut : ConnectFailure.General,
                $"upstream proxy {_name} is unreachable: {e.Message}", e);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TransportConnectException(ConnectFailure.TimedOut, $"upstream proxy {_name}: no connection within {_timeout.TotalSeconds:0} s");
        }
        try
        {
            switch (Proxy.Kind)
            {
                case UpstreamProxyKind.Socks5:
                    await ProxyHandshake.Socks5Async(stream, destination,
                        Proxy.User is { } u ? u.AsMemory() : (ReadOnlyMemory<byte>?)null, Proxy.Password is { } p ? p.AsMemory() : (ReadOnlyMemory<byte>?)null, _prefix, limit.Token).ConfigureAwait(false);
                    break;
                case UpstreamProxyKind.Socks4a:
                    await ProxyHandshake.Socks4aAsync(stream, destination, Proxy.User ?? [], _prefix, limit.Token).ConfigureAwait(false);
                    break;
                default:
                    await ProxyHandshake.HttpConnectAsync(stream, destination, Proxy.User, Proxy.Password, _prefix, limit.Token).ConfigureAwait(false);
                    break;
            }
            return stream;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.TimedOut, $"upstream proxy {_name}: connecting to {destination} took longer than {_timeout.TotalSeconds:0} s");
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"upstream proxy {_name}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The dialer the host uses: through <paramref name="proxy"/> when set, else direct; both with <paramref name="bind"/>.</summary>
    public static INetworkDialer Create(UpstreamProxy? proxy, OutboundBindAddresses? bind = null, TimeSpan? timeout = null)
    {
        var direct = new DirectDialer(timeout, bind);
        return proxy is null ? direct : new ProxyDialer(proxy, direct, timeout);
    }

    public override string ToString() => _name;
}
