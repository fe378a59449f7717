using Newtonsoft.Json.Linq;

namespace PtHost.Embedded;

/// <summary>HttpClient over an in-process transport.</summary>
public static class HttpHandlerExtensions
{
    /// <summary>Every connection the handler opens is <paramref name="client"/>'s transport stream to the request's host and port.</summary>
    public static SocketsHttpHandler UsePluggableTransport(this SocketsHttpHandler handler, EmbeddedClient client, string transport, JObject? settings = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ArgumentNullException.ThrowIfNull(client);
        handler.ConnectCallback = (context, ct) => new ValueTask<Stream>(client.ConnectAsync(transport, settings, context.DnsEndPoint.Host, context.DnsEndPoint.Port, ct));
        return handler;
    }
}
