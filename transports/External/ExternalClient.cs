using System.Net.Sockets;
using System.Text;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Transports.External;

/// <summary>Per-connection settings turned into PT 1.0 argument bytes once, when the session's settings are checked.</summary>
internal sealed record ExternalSettings(byte[] Args);

internal sealed class ExternalClient : IClientFactory, IStartableClientFactory
{
    private readonly TransportEnvironment _context;
    private readonly ExternalOptions _options;
    private readonly Pt1Child _child;
    private readonly string _childName;
    private string _protocol = "socks5";

    public ExternalClient(TransportEnvironment context, ExternalOptions options)
    {
        _context = context;
        _options = options;
        _childName = $"{context.Name} child {Path.GetFileName(options.Exec)}";
        var log = context.LoggerFactory.CreateLogger("PtHost.Transports.External");
        _child = new Pt1Child(context.Name, options, client: true, _ => Environment(), log);
    }

    /// <summary>pt-spec §3.2.2, plus the host's upstream proxy and outbound bind addresses, which the child then applies itself.</summary>
    private Dictionary<string, string> Environment()
    {
        var env = Pt1Child.CommonEnvironment(_context);
        env["TOR_PT_CLIENT_TRANSPORTS"] = _options.Method;
        var direct = _context.Dialer as DirectDialer;
        if (_context.Dialer is ProxyDialer proxy)
        {
            env["TOR_PT_PROXY"] = proxy.Proxy.ToUri();
            direct = proxy.Direct;
        }
        if (direct?.Bind.V4 is { } v4) env["TOR_PT_OUTBOUND_BIND_ADDRESS_V4"] = v4.ToString();
        if (direct?.Bind.V6 is { } v6) env["TOR_PT_OUTBOUND_BIND_ADDRESS_V6"] = $"[{v6}]";
        return env;
    }

    public async ValueTask StartAsync(CancellationToken cancellationToken)
    {
        var endpoint = await _child.StartAsync(cancellationToken).ConfigureAwait(false);
        _protocol = endpoint.Protocol;
    }

    public object? ParseSettings(ConnectionSettings settings)
    {
        var args = Pt1Wire.SettingsToArgs(settings);
        byte[] bytes = Encoding.UTF8.GetBytes(Pt1Wire.FormatConnectionArgs(args));
        int limit = _protocol == "socks4" ? 255 : Pt1Wire.MaxConnectionArgsBytes;
        if (bytes.Length > limit)
            throw new SettingsException(args[^1].Key, $"makes the PT 1.0 arguments {bytes.Length} bytes long; {_protocol} carries at most {limit}");
        return new ExternalSettings(bytes);
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        byte[] args = (request.Settings as ExternalSettings)?.Args ?? [];
        var server = _options.ServerAddress ?? request.Destination;
        if (server.IsUnspecified)
            throw new TransportConnectException(ConnectFailure.HostUnreachable, "no server address: the request names none and the options give no \"serverAddress\"");
        var child = await _child.ReadyAsync(cancellationToken).ConfigureAwait(false);
        Stream stream;
        try
        {
            // The child is on loopback: a plain connection, never through the upstream proxy.
            stream = await new DirectDialer().ConnectTcpAsync(new Destination(child.EndPoint), cancellationToken).ConfigureAwait(false);
        }
        catch (TransportConnectException e)
        {
            throw new TransportConnectException(ConnectFailure.General, $"{_childName} does not accept on {child.EndPoint}: {e.Message}", e);
        }
        try
        {
            if (child.Protocol == "socks4")
                await ProxyHandshake.Socks4aAsync(stream, server, args, _childName, cancellationToken).ConfigureAwait(false);
            else if (args.Length == 0)
                await ProxyHandshake.Socks5Async(stream, server, null, null, _childName, cancellationToken).ConfigureAwait(false);
            else
            {
                var (user, password) = Pt1Wire.SplitForRfc1929(args);
                await ProxyHandshake.Socks5Async(stream, server, user, password, _childName, cancellationToken).ConfigureAwait(false);
            }
            return stream;
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"{_childName}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public ValueTask DisposeAsync() => _child.DisposeAsync();
}
