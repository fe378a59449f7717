using System.Text;
using Newtonsoft.Json.Linq;

namespace PtHost.Socks;

/// <summary>
/// PT 1.0 per-connection arguments (pt-spec §3.5): <c>k=v;k=v</c>, where <c>\</c> escapes the next
/// character (so <c>\\</c>, <c>\=</c>, <c>\;</c>). Keys are non-empty; a key may not repeat.
/// </summary>
public static class PtArgs
{
    public static JObject Parse(string text)
    {
        var result = new JObject();
        if (text.Length == 0) return result;
        var key = new StringBuilder();
        var value = new StringBuilder();
        bool inValue = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '\\')
            {
                if (++i == text.Length) throw new FormatException("arguments end with an unfinished escape '\\'");
                (inValue ? value : key).Append(text[i]);
            }
            else if (c == '=' && !inValue) inValue = true;
            else if (c == ';') Add();
            else (inValue ? value : key).Append(c);
        }
        if (inValue || key.Length > 0) Add(); // a trailing ';' is tolerated
        return result;

        void Add()
        {
            if (!inValue)
            {
                if (key.Length == 0) throw new FormatException("empty argument between ';'");
                throw new FormatException($"argument \"{key}\" has no '='");
            }
            if (key.Length == 0) throw new FormatException("argument with an empty key");
            string k = key.ToString();
            if (result.ContainsKey(k)) throw new FormatException($"argument \"{k}\" appears twice");
            result[k] = value.ToString();
            key.Clear();
            value.Clear();
            inValue = false;
        }
    }

    public static string Escape(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char c in s)
        {
            if (c is '\\' or '=' or ';') sb.Append('\\');
            sb.Append(c);
        }
        return sb.ToString();
    }

    public static string Format(IEnumerable<KeyValuePair<string, string>> args) =>
        string.Join(';', args.Select(kv => Escape(kv.Key) + "=" + Escape(kv.Value)));
}
