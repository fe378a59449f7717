using System.Net;
using System.Text;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Configuration;

/// <summary>The top-level <c>turn</c> key of a client configuration (spec/turn.md §2). Unknown keys are errors.</summary>
public static class TurnConfig
{
    public static readonly string[] Keys = ["listenaddr", "realm", "users"];
    /// <summary>RFC 5389 §15.7 and §15.3: REALM under 128 characters, USERNAME under 513 bytes.</summary>
    public const int MaxRealmChars = 127, MaxUserBytes = 512;

    /// <summary>Null when the key is absent (no TURN listeners). Throws <see cref="OptionsException"/> naming the key's path.</summary>
    public static TurnOptions? Read(OptionsReader o, int transports = 1)
    {
        if (o.IsAbsent) return null;
        o.RejectUnknown(Keys);
        var listen = o.EndPoint("listenaddr") ?? new IPEndPoint(IPAddress.Loopback, 0);
        if (listen.Port != 0 && transports > 1)
            throw o.Fail("listenaddr", "a fixed port can serve one transport only; use port 0 (each transport then gets its own port)");
        string realm = o.Require("realm").String("realm")!;
        if (realm.Length is 0 or > MaxRealmChars) throw o.Fail("realm", $"must be a string of 1 to {MaxRealmChars} characters");
        var usersObject = o.Require("users", "an object name → password").Object("users");
        var users = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string name in usersObject.Keys)
        {
            if (name.Length == 0 || Encoding.UTF8.GetByteCount(name) > MaxUserBytes || name.Contains(':'))
                throw usersObject.Fail(name, $"a user name must be 1 to {MaxUserBytes} bytes without ':'");
            string password = usersObject.String(name)!;
            if (password.Length == 0) throw usersObject.Fail(name, "the password must not be empty");
            users[name] = password;
        }
        if (users.Count == 0) throw o.Fail("users", "must name at least one user: name → password");
        return new TurnOptions(listen, realm, users);
    }
}
