using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Plain;

/// <summary>Client options (spec/plain.md §4.1).</summary>
internal sealed record PlainClientOptions(Destination? ServerAddress, bool Discover)
{
    public static PlainClientOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, "options.plain");
        r.RejectUnknown("serverAddress", "discover");
        var server = r.Destination("serverAddress");
        bool discover = r.Bool("discover", false);
        if (server is not null && discover) throw r.Fail("discover", "true excludes \"serverAddress\"");
        return new(server, discover);
    }
}

/// <summary>Server options (spec/plain.md §4.2).</summary>
internal sealed record PlainServerOptions(Destination? Advertise)
{
    public static PlainServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, "options.plain");
        r.RejectUnknown("advertise");
        return new(r.Destination("advertise"));
    }
}
