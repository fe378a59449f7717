using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Rud;

internal static class RudOptionText
{
    public static byte[] Key(JToken value, string name)
    {
        if (value.Type != JTokenType.String) throw new TransportOptionsException($"rud option \"{name}\" must be a base64 string of 32 bytes");
        try
        {
            var k = Convert.FromBase64String((string)value!);
            return k.Length == X25519.KeySize ? k : throw new TransportOptionsException($"rud option \"{name}\" must be 32 bytes (base64), not {k.Length}");
        }
        catch (FormatException) { throw new TransportOptionsException($"rud option \"{name}\" is not base64"); }
    }

    public static TimeSpan Seconds(JToken value, string name) =>
        value.Type is JTokenType.Integer or JTokenType.Float && (double)value! is > 0 and <= 3600 and var s
            ? TimeSpan.FromSeconds(s)
            : throw new TransportOptionsException($"rud option \"{name}\" must be a number of seconds above 0, at most 3600");

    /// <summary>The option's spelling of <paramref name="c"/>, for logs.</summary>
    public static string CongestionName(CongestionControl c) => c == CongestionControl.NewReno ? "newreno" : "bbr";

    /// <summary>The "congestion" option (§12): "bbr" (the default) or "newreno".</summary>
    public static CongestionControl Congestion(JToken value) =>
        value.Type == JTokenType.String ? (string)value! switch
        {
            "bbr" => CongestionControl.Bbr,
            "newreno" => CongestionControl.NewReno,
            _ => throw new TransportOptionsException($"rud option \"congestion\" must be \"bbr\" or \"newreno\", not \"{(string)value!}\""),
        } : throw new TransportOptionsException("rud option \"congestion\" must be the string \"bbr\" or \"newreno\"");
}

/// <summary>Client options (§12): the server's public key, optionally its address, the congestion control.</summary>
internal sealed record RudClientOptions(Destination? ServerAddress, byte[] ServerKey, TimeSpan HandshakeTimeout, CongestionControl Congestion = CongestionControl.Bbr)
{
    public static RudClientOptions Parse(JToken? options)
    {
        if (options is not JObject o) throw new TransportOptionsException("rud client options must be an object with \"serverKey\" (pthost generate-config rud)");
        Destination? server = null;
        byte[]? key = null;
        var timeout = TimeSpan.FromSeconds(10);
        var congestion = CongestionControl.Bbr;
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "serverAddress":
                    if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                        throw new TransportOptionsException("rud option \"serverAddress\" must be \"host:port\"");
                    break;
                case "serverKey": key = RudOptionText.Key(p.Value, "serverKey"); break;
                case "handshakeTimeout": timeout = RudOptionText.Seconds(p.Value, "handshakeTimeout"); break;
                case "congestion": congestion = RudOptionText.Congestion(p.Value); break;
                default: throw new TransportOptionsException($"rud has no client option \"{p.Name}\" (known: serverAddress, serverKey, handshakeTimeout, congestion)");
            }
        }
        if (key is null) throw new TransportOptionsException("rud client option \"serverKey\" is required (pthost generate-config rud)");
        Span<byte> probe = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(X25519.GeneratePrivateKey(), key, probe))
            throw new TransportOptionsException("rud option \"serverKey\" is not a usable X25519 public key (a low-order point)");
        return new(server, key, timeout, congestion);
    }
}

/// <summary>Server options (§12).</summary>
internal sealed record RudServerOptions(byte[]? Key, ChallengePolicy Challenge, bool FirstContact, CongestionControl Congestion = CongestionControl.Bbr)
{
    public static RudServerOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new(null, ChallengePolicy.Load, false);
        if (options is not JObject o) throw new TransportOptionsException("rud server options must be an object");
        byte[]? key = null;
        var challenge = ChallengePolicy.Load;
        bool first = false;
        var congestion = CongestionControl.Bbr;
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "key": key = RudOptionText.Key(p.Value, "key"); break;
                case "challenge":
                    challenge = p.Value.Type == JTokenType.String ? (string)p.Value! switch
                    {
                        "load" => ChallengePolicy.Load,
                        "always" => ChallengePolicy.Always,
                        "never" => ChallengePolicy.Never,
                        _ => throw new TransportOptionsException("rud option \"challenge\" must be \"load\", \"always\" or \"never\""),
                    } : throw new TransportOptionsException("rud option \"challenge\" must be \"load\", \"always\" or \"never\"");
                    break;
                case "firstContact":
                    first = p.Value.Type == JTokenType.Boolean ? (bool)p.Value : throw new TransportOptionsException("rud option \"firstContact\" must be true or false");
                    break;
                case "congestion": congestion = RudOptionText.Congestion(p.Value); break;
                default: throw new TransportOptionsException($"rud has no server option \"{p.Name}\" (known: key, challenge, firstContact, congestion)");
            }
        }
        return new(key, challenge, first, congestion);
    }
}
