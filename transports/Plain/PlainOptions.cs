using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Plain;

internal sealed record PlainClientOptions(Destination? ServerAddress, bool Discover)
{
    public static PlainClientOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new(null, false);
        if (options is not JObject o) throw new TransportOptionsException("plain client options must be an object");
        Destination? server = null;
        bool discover = false;
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "serverAddress":
                    if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                        throw new TransportOptionsException("plain option \"serverAddress\" must be \"host:port\"");
                    break;
                case "discover":
                    if (p.Value.Type != JTokenType.Boolean) throw new TransportOptionsException("plain option \"discover\" must be true or false");
                    discover = (bool)p.Value;
                    break;
                default:
                    throw new TransportOptionsException($"plain has no client option \"{p.Name}\" (known: serverAddress, discover)");
            }
        }
        if (server is not null && discover) throw new TransportOptionsException("plain options \"serverAddress\" and \"discover\" exclude each other");
        return new(server, discover);
    }
}

internal sealed record PlainServerOptions(Destination? Advertise)
{
    public static PlainServerOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new((Destination?)null);
        if (options is not JObject o) throw new TransportOptionsException("plain server options must be an object");
        Destination? advertise = null;
        foreach (var p in o.Properties())
        {
            if (p.Name != "advertise") throw new TransportOptionsException($"plain has no server option \"{p.Name}\" (known: advertise)");
            if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out advertise) || advertise.Port == 0)
                throw new TransportOptionsException("plain option \"advertise\" must be \"host:port\"");
        }
        return new(advertise);
    }
}
