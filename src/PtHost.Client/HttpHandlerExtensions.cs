using System.Text.Json.Nodes;

namespace PtHost.Client;

/// <summary>HttpClient over a transport (spec/adapters.md §5.3): the handler's connections are transport connections.</summary>
public static class HttpHandlerExtensions
{
    /// <summary>
    /// Sets <see cref="SocketsHttpHandler.ConnectCallback"/> so every connection the handler opens is
    /// <paramref name="client"/>'s connection over <paramref name="transport"/> to the request's host and port
    /// (the name is sent unresolved: the transport and the server resolve it).
    /// </summary>
    public static SocketsHttpHandler UsePluggableTransport(this SocketsHttpHandler handler, PtHostClient client, string transport, JsonObject? settings = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ArgumentNullException.ThrowIfNull(client);
        handler.ConnectCallback = (context, ct) => new ValueTask<Stream>(client.ConnectAsync(transport, settings, context.DnsEndPoint, ct));
        return handler;
    }
}
