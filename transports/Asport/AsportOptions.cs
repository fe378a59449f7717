using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Asport;

/// <summary>Server options (spec/asport.md §6.1): the ASPORT relay to register with, and how.</summary>
internal sealed record AsportServerOptions(IPEndPoint Server, byte[] Pin, Guid User, string Password, ForwardMode Mode, ushort PortStart, ushort PortEnd)
{
    public static AsportServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, "options.asport");
        if (r.IsAbsent) throw r.Fail("is required: an object with \"server\", \"pin\", \"user\" and \"password\"");
        r.RejectUnknown(Keys);
        return Read(r);
    }

    /// <summary>The keys <see cref="Read"/> takes.</summary>
    public static readonly string[] Keys = ["server", "pin", "user", "password", "mode", "ports"];

    /// <summary>Reads <see cref="Keys"/> from <paramref name="r"/> (the caller rejects unknown keys): also the
    /// configuration of <c>pthost asport-client</c> (spec/asport.md §4.4).</summary>
    public static AsportServerOptions Read(OptionsReader r)
    {
        var server = r.Require("server").Parse("server", t => Destination.TryParse(t, out var d) && d.Address is not null && d.Port != 0 ? new IPEndPoint(d.Address, d.Port) : null,
            "must be \"ip:port\" of an ASPORT server")!;
        byte[] pin = r.Require("pin").Parse("pin", t => t.Length == 64 && t.All(char.IsAsciiHexDigit) ? Convert.FromHexString(t) : null,
            "must be the server certificate's SHA-256 as 64 hex digits")!;
        var user = r.Require("user").ParseValue("user", t => Guid.TryParseExact(t, "D", out var g) ? g : (Guid?)null, "must be a UUID")!.Value;
        string password = r.Require("password").String("password")!;
        if (password.Length == 0) throw r.Fail("password", "must not be empty");
        var mode = (ForwardMode)r.Integer("mode", (long)ForwardMode.Tcp, 0, 4);
        var ports = r.ParseValue<(ushort Start, ushort End)>("ports", t => AsportRelayOptions.TryParseRange(t, out var range) ? range : null, "must be \"N\" or \"N-M\"") ?? (1, 65535);
        return new(server, pin, user, password, mode, ports.Start, ports.End);
    }
}

/// <param name="ServerAddress">The public address when no SMESSAGE announced one.</param>
/// <param name="Udp">Whether <paramref name="ServerAddress"/>'s port has UDP bound (spec/asport.md §6.2).</param>
internal sealed record AsportClientOptions(Destination? ServerAddress, bool Udp = false)
{
    public static AsportClientOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, "options.asport");
        r.RejectUnknown("serverAddress", "udp");
        // "serverAddress": null is the same as absent.
        var server = r.Token("serverAddress") is { Type: JTokenType.Null } ? null : r.Destination("serverAddress");
        return new(server, r.Bool("udp", false));
    }
}
