using System.Net;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Transports.External;

/// <summary>One line a PT 1.0 child wrote on stdout (pt-spec §3.3), split into its keyword and the rest.</summary>
internal readonly record struct Pt1Line(string Keyword, string Rest)
{
    public static Pt1Line Parse(string line)
    {
        int sp = line.IndexOf(' ');
        return sp < 0 ? new(line, "") : new(line[..sp], line[(sp + 1)..]);
    }
}

/// <summary>
/// The PT 1.0 text formats the parent side needs (pt-spec §3.2–§3.5): reading CMETHOD, SMETHOD with
/// ARGS, LOG; writing TOR_PT_SERVER_TRANSPORT_OPTIONS and per-connection arguments.
/// </summary>
internal static class Pt1Wire
{
    /// <summary><c>CMETHOD &lt;t&gt; socks5|socks4 &lt;ip:port&gt;</c> (the rest after the keyword).</summary>
    public static (string Method, string Protocol, IPEndPoint EndPoint) ParseCmethod(string rest)
    {
        var parts = rest.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 3 || !IPEndPoint.TryParse(parts[2], out var ep) || ep.Port == 0)
            throw new FormatException($"malformed CMETHOD line \"CMETHOD {rest}\"");
        return (parts[0], parts[1], ep);
    }

    /// <summary><c>SMETHOD &lt;t&gt; &lt;ip:port&gt; [ARGS:k=v,k=v] [other options]</c>.</summary>
    public static (string Method, IPEndPoint EndPoint, Dictionary<string, string> Args) ParseSmethod(string rest)
    {
        var parts = rest.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 2 || !IPEndPoint.TryParse(parts[1], out var ep) || ep.Port == 0)
            throw new FormatException($"malformed SMETHOD line \"SMETHOD {rest}\"");
        var args = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var option in parts.Skip(2))
            if (option.StartsWith("ARGS:", StringComparison.Ordinal)) args = ParseSmethodArgs(option[5..]);
        return (parts[0], ep, args);
    }

    /// <summary><c>k=v,k=v</c> where <c>\</c> escapes the next character (so <c>\,</c>, <c>\=</c>, <c>\\</c>).</summary>
    public static Dictionary<string, string> ParseSmethodArgs(string text)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        var key = new StringBuilder();
        var value = new StringBuilder();
        bool inValue = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '\\')
            {
                if (++i == text.Length) throw new FormatException("SMETHOD ARGS end with a lone '\\'");
                (inValue ? value : key).Append(text[i]);
            }
            else if (c == '=' && !inValue) inValue = true;
            else if (c == ',') Add();
            else (inValue ? value : key).Append(c);
        }
        if (key.Length > 0 || inValue) Add();
        return result;

        void Add()
        {
            if (!inValue || key.Length == 0) throw new FormatException($"SMETHOD ARGS entry \"{key}\" is not k=v");
            result[key.ToString()] = value.ToString();
            key.Clear();
            value.Clear();
            inValue = false;
        }
    }

    /// <summary>
    /// <c>LOG SEVERITY=&lt;s&gt; MESSAGE=&lt;m&gt;</c>: the level and the message, the message's C-style
    /// quoting undone (pt-spec §3.3.4). Unknown severities log as Information.
    /// </summary>
    public static (LogLevel Level, string Message) ParseLog(string rest)
    {
        string severity = "notice";
        string message = rest;
        if (rest.StartsWith("SEVERITY=", StringComparison.Ordinal))
        {
            int sp = rest.IndexOf(' ');
            severity = sp < 0 ? rest[9..] : rest[9..sp];
            message = sp < 0 ? "" : rest[(sp + 1)..];
        }
        if (message.StartsWith("MESSAGE=", StringComparison.Ordinal)) message = message[8..];
        if (message.Length >= 2 && message[0] == '"' && message[^1] == '"') message = Unquote(message[1..^1]);
        var level = severity switch
        {
            "error" => LogLevel.Error,
            "warning" => LogLevel.Warning,
            "debug" => LogLevel.Debug,
            _ => LogLevel.Information,
        };
        return (level, message);
    }

    /// <summary>
    /// spec/external.md §4.7: the child's text as one log line. Control characters (C0, DEL, C1) and the Unicode
    /// line and paragraph separators become <c>\n</c>, <c>\r</c>, <c>\t</c>, <c>\xHH</c> or <c>\uHHHH</c>, and a
    /// backslash becomes <c>\\</c>, so nothing a child writes can end our line or start one that looks like ours.
    /// </summary>
    public static string EscapeControl(string text)
    {
        int i = 0;
        while (i < text.Length && !NeedsEscape(text[i])) i++;
        if (i == text.Length) return text;
        var sb = new StringBuilder(text.Length + 16).Append(text, 0, i);
        for (; i < text.Length; i++)
        {
            char c = text[i];
            if (!NeedsEscape(c)) { sb.Append(c); continue; }
            sb.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\\' => "\\\\",
                < '\u0100' => $"\\x{(int)c:X2}",
                _ => $"\\u{(int)c:X4}",
            });
        }
        return sb.ToString();

        static bool NeedsEscape(char c) => c < ' ' || c is '\\' or (>= '\u007F' and <= '\u009F') or '\u2028' or '\u2029';
    }

    private static string Unquote(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] != '\\' || i + 1 == s.Length) { sb.Append(s[i]); continue; }
            char e = s[++i];
            sb.Append(e switch { 'n' => '\n', 'r' => '\r', 't' => '\t', _ => e });
        }
        return sb.ToString();
    }

    /// <summary>
    /// TOR_PT_SERVER_TRANSPORT_OPTIONS: <c>t:k=v;t:k=v</c>, with <c>\</c> escaping <c>\</c>, <c>:</c>,
    /// <c>;</c> and <c>=</c> in keys and values (pt-spec §3.2.3).
    /// </summary>
    public static string FormatServerOptions(string method, IEnumerable<KeyValuePair<string, string>> options) =>
        string.Join(';', options.Select(kv => method + ":" + Escape(kv.Key, ":;=\\") + "=" + Escape(kv.Value, ":;=\\")));

    /// <summary>Per-connection arguments: <c>k=v;k=v</c>, with <c>\</c> escaping <c>\</c>, <c>=</c> and <c>;</c> (pt-spec §3.5).</summary>
    public static string FormatConnectionArgs(IEnumerable<KeyValuePair<string, string>> args) =>
        string.Join(';', args.Select(kv => Escape(kv.Key, "=;\\") + "=" + Escape(kv.Value, "=;\\")));

    private static string Escape(string s, string special)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char c in s)
        {
            if (special.Contains(c)) sb.Append('\\');
            sb.Append(c);
        }
        return sb.ToString();
    }

    /// <summary>The most bytes of arguments RFC 1929 can carry: 255 in UNAME and 255 in PASSWD.</summary>
    public const int MaxConnectionArgsBytes = 510;

    /// <summary>
    /// Splits encoded arguments into RFC 1929 fields (pt-spec §3.5): the first 255 bytes in UNAME and
    /// the rest in PASSWD; when everything fits in UNAME, PASSWD is a single NUL byte.
    /// </summary>
    public static (byte[] User, byte[] Password) SplitForRfc1929(byte[] args)
    {
        if (args.Length > MaxConnectionArgsBytes) throw new ArgumentException("arguments longer than 510 bytes");
        if (args.Length <= 255) return (args, [0]);
        return (args[..255], args[255..]);
    }

    /// <summary>
    /// The session's JSON settings as PT 1.0 arguments. Strings go as they are; numbers and booleans
    /// as their JSON text; other values cannot be expressed and are rejected.
    /// </summary>
    public static List<KeyValuePair<string, string>> SettingsToArgs(ConnectionSettings settings)
    {
        var list = new List<KeyValuePair<string, string>>();
        foreach (var p in settings.Values.Properties())
        {
            string value = p.Value.Type switch
            {
                Newtonsoft.Json.Linq.JTokenType.String => (string)p.Value!,
                Newtonsoft.Json.Linq.JTokenType.Integer or Newtonsoft.Json.Linq.JTokenType.Float => StrictJson.Write(p.Value),
                Newtonsoft.Json.Linq.JTokenType.Boolean => (bool)p.Value ? "true" : "false",
                _ => throw new SettingsException(p.Name, "must be a string, a number or a boolean (PT 1.0 arguments are text)"),
            };
            if (p.Name.Length == 0) throw new SettingsException(p.Name, "is an empty key");
            if (p.Name.Contains('\0') || value.Contains('\0')) throw new SettingsException(p.Name, "contains NUL");
            list.Add(new(p.Name, value));
        }
        return list;
    }
}
