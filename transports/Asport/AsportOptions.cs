using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Asport;

internal sealed record AsportServerOptions(IPEndPoint Server, byte[] Pin, Guid User, string Password, ForwardMode Mode, ushort PortStart, ushort PortEnd)
{
    private const string Known = "server, pin, user, password, mode, ports";

    public static AsportServerOptions Parse(JToken? options)
    {
        if (options is not JObject o) throw new TransportOptionsException("asport server options are required: {" + Known + "}");
        foreach (var p in o.Properties())
            if (!Known.Split(", ").Contains(p.Name)) throw new TransportOptionsException($"asport has no server option \"{p.Name}\" (known: {Known})");
        string Str(string key) => o[key] is JValue { Type: JTokenType.String } v ? (string)v! : throw new TransportOptionsException($"asport option \"{key}\" must be a string");
        if (!Destination.TryParse(Str("server"), out var server) || server.Address is null || server.Port == 0)
            throw new TransportOptionsException("asport option \"server\" must be \"ip:port\" of an ASPORT server");
        byte[] pin;
        try { pin = Convert.FromHexString(Str("pin")); }
        catch (FormatException) { pin = []; }
        if (pin.Length != 32) throw new TransportOptionsException("asport option \"pin\" must be the server certificate's SHA-256 as 64 hex digits");
        if (!Guid.TryParseExact(Str("user"), "D", out var user)) throw new TransportOptionsException("asport option \"user\" must be a UUID");
        var password = Str("password");
        if (password.Length == 0) throw new TransportOptionsException("asport option \"password\" must not be empty");
        var mode = ForwardMode.Tcp;
        if (o["mode"] is { } m)
        {
            if (!StrictJson.TryGetInt64(m, out var mv) || mv is < 0 or > 4) throw new TransportOptionsException("asport option \"mode\" must be 0..4 (0 TCP, 1 UDP native, 2 UDP QUIC, 3 TCP+UDP native, 4 TCP+UDP QUIC)");
            mode = (ForwardMode)mv;
        }
        (ushort, ushort) ports = (1, 65535);
        if (o["ports"] is not null && !AsportRelayOptions.TryParseRange(Str("ports"), out ports))
            throw new TransportOptionsException("asport option \"ports\" must be \"N\" or \"N-M\"");
        return new(new IPEndPoint(server.Address, server.Port), pin, user, password, mode, ports.Item1, ports.Item2);
    }
}

/// <param name="ServerAddress">The public address when no SMESSAGE announced one.</param>
/// <param name="Udp">Whether <paramref name="ServerAddress"/>'s port has UDP bound (spec/asport.md §6.2).</param>
internal sealed record AsportClientOptions(Destination? ServerAddress, bool Udp = false)
{
    public static AsportClientOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new((Destination?)null);
        if (options is not JObject o) throw new TransportOptionsException("asport client options must be an object");
        Destination? server = null;
        var udp = false;
        foreach (var p in o.Properties())
        {
            if (p.Name == "udp")
            {
                if (p.Value.Type != JTokenType.Boolean) throw new TransportOptionsException("asport option \"udp\" must be true or false");
                udp = (bool)p.Value!;
                continue;
            }
            if (p.Name != "serverAddress") throw new TransportOptionsException($"asport has no client option \"{p.Name}\" (known: serverAddress, udp)");
            if (p.Value.Type == JTokenType.Null) continue;
            if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                throw new TransportOptionsException("asport option \"serverAddress\" must be \"host:port\"");
        }
        return new(server, udp);
    }
}
