using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>
/// Per-connection settings as the SOCKS front end received them: a JSON object (methods 0x09 and
/// 0x80) or PT 1.0 <c>k=v</c> arguments (RFC 1929 username/password), whose values are strings.
/// </summary>
public sealed class ConnectionSettings
{
    /// <summary>No settings (method 0x00).</summary>
    public static ConnectionSettings Empty { get; } = new(new JObject(), SettingsSource.None);

    /// <summary>Wraps settings.</summary>
    public ConnectionSettings(JObject values, SettingsSource source)
    {
        Values = values;
        Source = source;
    }

    /// <summary>The settings; never null. Treat as read-only.</summary>
    public JObject Values { get; }

    /// <summary>How the settings arrived.</summary>
    public SettingsSource Source { get; }

    /// <summary>True when no key was given.</summary>
    public bool IsEmpty => !Values.HasValues;

    /// <summary>The value of <paramref name="key"/> as a string, or null when absent; throws <see cref="SettingsException"/> when it is not a string.</summary>
    public string? GetString(string key)
    {
        var token = Values[key];
        if (token is null || token.Type == JTokenType.Null) return null;
        if (token.Type != JTokenType.String) throw new SettingsException(key, "must be a string");
        return (string)token!;
    }

    /// <summary>Throws <see cref="SettingsException"/> for the first key not in <paramref name="known"/>.</summary>
    public void RejectUnknownKeys(params string[] known)
    {
        foreach (var property in Values.Properties())
            if (Array.IndexOf(known, property.Name) < 0)
                throw new SettingsException(property.Name, "is not a setting of this transport");
    }
}

/// <summary>Where per-connection settings came from.</summary>
public enum SettingsSource
{
    /// <summary>SOCKS method 0x00.</summary>
    None,
    /// <summary>SOCKS method 0x09 or 0x80: a JSON object.</summary>
    Json,
    /// <summary>PT 1.0 <c>k=v;k=v</c> arguments in RFC 1929 username/password or SOCKS4 USERID.</summary>
    PtArgs,
}
