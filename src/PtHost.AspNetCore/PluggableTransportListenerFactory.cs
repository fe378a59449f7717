using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Nerdbank.Streams;
using Newtonsoft.Json.Linq;
using PtHost.Embedded;

namespace PtHost.AspNetCore;

/// <summary>Kestrel's transport: every endpoint Kestrel binds is an in-process server of one pluggable transport.</summary>
public sealed class PluggableTransportListenerFactory(string transport, JObject? options, Action<EmbeddedServer>? started, ILoggerFactory? loggers)
    : IConnectionListenerFactory
{
    public async ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        if (endpoint is not IPEndPoint ip) throw new NotSupportedException($"a pluggable transport binds IP endpoints, not {endpoint}");
        var server = await EmbeddedServer.StartAsync(transport, options, ip, loggers: loggers, ct: cancellationToken).ConfigureAwait(false);
        started?.Invoke(server);
        return new PluggableTransportListener(server);
    }
}

/// <summary>One bound endpoint: accepted transport sessions as Kestrel connections.</summary>
internal sealed class PluggableTransportListener(EmbeddedServer server) : IConnectionListener
{
    private long _next;

    public EndPoint EndPoint => server.EndPoint;

    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            var session = await server.AcceptAsync(cancellationToken).ConfigureAwait(false);
            return new SessionConnection($"pt-{server.Transports[0]}-{Interlocked.Increment(ref _next)}", session, server.EndPoint);
        }
        catch (System.Threading.Channels.ChannelClosedException)
        {
            return null; // unbound: Kestrel stops accepting
        }
    }

    public ValueTask UnbindAsync(CancellationToken cancellationToken = default) => server.DisposeAsync();

    public ValueTask DisposeAsync() => server.DisposeAsync();
}

/// <summary>A transport session as a Kestrel connection: the session's stream seen as a duplex pipe.</summary>
internal sealed class SessionConnection : ConnectionContext
{
    private readonly EmbeddedSession _session;

    public SessionConnection(string id, EmbeddedSession session, EndPoint local)
    {
        ConnectionId = id;
        _session = session;
        Transport = session.Stream.UsePipe(cancellationToken: CancellationToken.None);
        LocalEndPoint = local;
        RemoteEndPoint = session.Remote;
    }

    public override string ConnectionId { get; set; }
    public override IFeatureCollection Features { get; } = new FeatureCollection();
    public override IDictionary<object, object?> Items { get; set; } = new Dictionary<object, object?>();
    public override IDuplexPipe Transport { get; set; }

    public override void Abort(Microsoft.AspNetCore.Connections.ConnectionAbortedException abortReason) => _session.Stream.Dispose();

    public override async ValueTask DisposeAsync()
    {
        await Transport.Input.CompleteAsync().ConfigureAwait(false);
        await Transport.Output.CompleteAsync().ConfigureAwait(false);
        await _session.Stream.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary><c>builder.WebHost.UsePluggableTransport(...)</c>.</summary>
public static class WebHostBuilderExtensions
{
    /// <summary>
    /// Serves Kestrel's endpoints over <paramref name="transport"/> in process: each endpoint (e.g.
    /// <c>http://127.0.0.1:0</c>) is the transport server's bind address, each accepted session a connection.
    /// <paramref name="started"/> receives each server (its <c>EndPoint</c>, <c>Args</c> and signals).
    /// </summary>
    public static IWebHostBuilder UsePluggableTransport(this IWebHostBuilder builder, string transport, JObject? options = null, Action<EmbeddedServer>? started = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.ConfigureServices(services => services.AddSingleton<IConnectionListenerFactory>(sp =>
            new PluggableTransportListenerFactory(transport, options, started, sp.GetService<ILoggerFactory>())));
    }
}
