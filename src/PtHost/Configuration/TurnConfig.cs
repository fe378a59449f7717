using System.Net;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Turn;

namespace PtHost.Configuration;

/// <summary>The top-level <c>turn</c> key of a client configuration (spec/turn.md §2). Unknown keys are errors.</summary>
public static class TurnConfig
{
    public static readonly string[] Keys = ["listenaddr", "realm", "users"];
    /// <summary>RFC 5389 §15.7 and §15.3: REALM under 128 characters, USERNAME under 513 bytes.</summary>
    public const int MaxRealmChars = 127, MaxUserBytes = 512;

    /// <summary>Null when the key is absent (no TURN listeners).</summary>
    public static TurnOptions? Parse(JToken? token, int transports = 1)
    {
        if (token is null) return null;
        if (token is not JObject o) throw new ConfigException("turn", "must be an object {\"listenaddr\", \"realm\", \"users\"}");
        foreach (var p in o.Properties())
            if (Array.IndexOf(Keys, p.Name) < 0)
                throw new ConfigException("turn", $"unknown key \"{p.Name}\" (known: {string.Join(", ", Keys)})");
        var listen = o["listenaddr"] switch
        {
            null => new IPEndPoint(IPAddress.Loopback, 0),
            { Type: JTokenType.String } s => PtConfig.ParseEndPoint("turn", (string)s!),
            _ => throw new ConfigException("turn", "\"listenaddr\" must be \"ip:port\""),
        };
        if (listen.Port != 0 && transports > 1)
            throw new ConfigException("turn", "a fixed \"listenaddr\" port can serve one transport only; use port 0 (each transport then gets its own port)");
        if (o["realm"] is not { Type: JTokenType.String } realmToken || ((string)realmToken!).Length is 0 or > MaxRealmChars)
            throw new ConfigException("turn", $"\"realm\" must be a string of 1 to {MaxRealmChars} characters");
        if (o["users"] is not JObject usersObject || !usersObject.HasValues)
            throw new ConfigException("turn", "\"users\" must be a non-empty object: name → password");
        var users = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var u in usersObject.Properties())
        {
            if (u.Name.Length == 0 || Encoding.UTF8.GetByteCount(u.Name) > MaxUserBytes || u.Name.Contains(':'))
                throw new ConfigException("turn", $"user name \"{u.Name}\" must be 1 to {MaxUserBytes} bytes without ':'");
            if (u.Value is not { Type: JTokenType.String } pw || ((string)pw!).Length == 0)
                throw new ConfigException("turn", $"the password of user \"{u.Name}\" must be a non-empty string");
            users[u.Name] = (string)pw!;
        }
        return new TurnOptions(listen, (string)realmToken!, users);
    }
}
