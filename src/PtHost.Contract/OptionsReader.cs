using System.Globalization;
using System.Net;
using System.Numerics;
using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>A value read by <see cref="OptionsReader"/> is unusable. <see cref="Path"/> names it from the document's root.</summary>
/// <param name="path">The key's full path, e.g. <c>options.zephyr.serverPin</c>, <c>turn.users["a b"]</c>, <c>allow[2]</c>; <c>(document)</c> for the whole text.</param>
/// <param name="problem">What is wrong, e.g. <c>must be a string</c>.</param>
/// <param name="inner">The failure behind it, if any.</param>
public sealed class OptionsException(string path, string problem, Exception? inner = null) : Exception($"{path}: {problem}", inner)
{
    /// <summary>The offending key's full path.</summary>
    public string Path { get; } = path;

    /// <summary>What is wrong with it.</summary>
    public string Problem { get; } = problem;
}

/// <summary>
/// The one reader of options and configuration objects (spec/ipc.md §3.3): the host's
/// configuration, every transport's <c>options</c>, the relays' configuration files and the
/// fixture plugin read through it, so every error names the key by its full path and types are
/// exact (a number is not a string, null is not absent). Explicit calls, no reflection: safe for
/// trimming and NativeAOT.
/// <code>
/// var r = OptionsReader.For(context.Options, "options.plain");
/// r.RejectUnknown("serverAddress", "discover");
/// var server = r.Destination("serverAddress");
/// bool discover = r.Bool("discover", false);
/// </code>
/// Every getter treats an absent key as "not given" (null or the fallback) and throws
/// <see cref="OptionsException"/> for a present value it cannot use.
/// </summary>
public sealed class OptionsReader
{
    private static readonly JObject Nothing = new();
    private readonly JObject _object;
    private readonly string _path;

    private OptionsReader(JObject o, string path, bool absent)
    {
        _object = o;
        _path = path;
        IsAbsent = absent;
    }

    /// <summary>
    /// A reader of <paramref name="token"/>, the object at <paramref name="path"/> (<c>""</c> for a
    /// whole document). An absent token or JSON null reads as an empty object with
    /// <see cref="IsAbsent"/> set; any other non-object throws.
    /// </summary>
    public static OptionsReader For(JToken? token, string path)
    {
        if (token is null || token.Type == JTokenType.Null) return new(Nothing, path, absent: true);
        return token is JObject o ? new(o, path, absent: false) : throw new OptionsException(Root(path), $"must be an object, not {Describe(token)}");
    }

    /// <summary>
    /// Parses <paramref name="json"/> strictly (<see cref="StrictJson"/>) and reads the object. Bad JSON is
    /// reported at the member where it was found (a duplicate name, a comment after a value), else <c>(document)</c>.
    /// </summary>
    public static OptionsReader Parse(string json, string path = "")
    {
        JToken token;
        try { token = StrictJson.Parse(json); }
        catch (StrictJsonException e)
        {
            // Where in the text: the member or element being read (a duplicate name, a comment after it, ...).
            string at = e.Path.Length == 0 ? Root(path) : path.Length == 0 ? e.Path : e.Path.StartsWith('[') ? path + e.Path : $"{path}.{e.Path}";
            throw new OptionsException(at, "not valid JSON (RFC 8259): " + e.Problem, e);
        }
        return token is JObject o ? new(o, path, absent: false) : throw new OptionsException(Root(path), $"must be a JSON object, not {Describe(token)}");
    }

    /// <summary>True when the object was absent or JSON null.</summary>
    public bool IsAbsent { get; }

    /// <summary>This object's path; <c>(document)</c> for a whole document.</summary>
    public string Path => Root(_path);

    /// <summary>The keys present, in document order.</summary>
    public IEnumerable<string> Keys => _object.Properties().Select(p => p.Name);

    /// <summary>The full path of <paramref name="key"/> in this object.</summary>
    public string PathOf(string key) => Child(_path, key);

    /// <summary>
    /// <paramref name="path"/> (<c>""</c>: the top level) and then <paramref name="key"/>: <c>a.b</c>; a key
    /// that is not [A-Za-z0-9_-]+ is quoted, <c>a["b c"]</c>.
    /// </summary>
    public static string Child(string path, string key) =>
        key.Length > 0 && key.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-')
            ? (path.Length == 0 ? key : $"{path}.{key}")
            : $"{path}[{StrictJson.Write(new JValue(key))}]";

    /// <summary>Whether <paramref name="key"/> is present (with any value, null included).</summary>
    public bool Has(string key) => _object.ContainsKey(key);

    /// <summary>The raw value of <paramref name="key"/>, or null when absent (a JSON null is a token).</summary>
    public JToken? Token(string key) => _object.TryGetValue(key, out var v) ? v : null;

    /// <summary>An error about <paramref name="key"/> (to throw).</summary>
    public OptionsException Fail(string key, string problem, Exception? inner = null) => new(PathOf(key), problem, inner);

    /// <summary>An error about this object as a whole (to throw).</summary>
    public OptionsException Fail(string problem, Exception? inner = null) => new(Path, problem, inner);

    /// <summary>Throws for the first key, in document order, that is not in <paramref name="known"/>.</summary>
    public void RejectUnknown(params string[] known)
    {
        foreach (var p in _object.Properties())
            if (Array.IndexOf(known, p.Name) < 0)
                throw Fail(p.Name, $"unknown key (known: {string.Join(", ", known)})");
    }

    /// <summary>Throws when <paramref name="key"/> is absent; <paramref name="hint"/> is added to the message.</summary>
    public OptionsReader Require(string key, string? hint = null) =>
        Has(key) ? this : throw Fail(key, hint is null ? "is required" : "is required: " + hint);

    /// <summary>A string; null when absent.</summary>
    public string? String(string key) => Token(key) switch
    {
        null => null,
        { Type: JTokenType.String } v => (string)v!,
        var v => throw Fail(key, $"must be a string, not {Describe(v)}"),
    };

    /// <summary>A string; <paramref name="fallback"/> when absent.</summary>
    public string String(string key, string fallback) => String(key) ?? fallback;

    /// <summary>One of <paramref name="values"/> (a string); null when absent.</summary>
    public string? OneOf(string key, params string[] values)
    {
        string expected = values.Length == 2
            ? $"\"{values[0]}\" or \"{values[1]}\""
            : "one of " + string.Join(", ", values.Select(v => $"\"{v}\""));
        var token = Token(key);
        if (token is null) return null;
        if (token.Type != JTokenType.String) throw Fail(key, $"must be {expected}, not {Describe(token)}");
        string s = (string)token!;
        return Array.IndexOf(values, s) >= 0 ? s : throw Fail(key, $"must be {expected}, not \"{s}\"");
    }

    /// <summary>true or false; <paramref name="fallback"/> when absent.</summary>
    public bool Bool(string key, bool fallback) => Token(key) switch
    {
        null => fallback,
        { Type: JTokenType.Boolean } v => (bool)v,
        var v => throw Fail(key, $"must be true or false, not {Describe(v)}"),
    };

    /// <summary>An integer from <paramref name="min"/> to <paramref name="max"/>; null when absent.</summary>
    public long? Integer(string key, long min, long max)
    {
        var token = Token(key);
        if (token is null) return null;
        return StrictJson.TryGetInt64(token, out long n) && n >= min && n <= max
            ? n
            : throw Fail(key, $"must be an integer from {min} to {max}, not {Describe(token)}");
    }

    /// <summary>An integer from <paramref name="min"/> to <paramref name="max"/>; <paramref name="fallback"/> when absent.</summary>
    public long Integer(string key, long fallback, long min, long max) => Integer(key, min, max) ?? fallback;

    /// <summary>A number of seconds above 0 and at most <paramref name="max"/> (fractions allowed); <paramref name="fallback"/> when absent.</summary>
    public TimeSpan Seconds(string key, TimeSpan fallback, double max)
    {
        var token = Token(key);
        if (token is null) return fallback;
        double? s = token is JValue { Type: JTokenType.Integer or JTokenType.Float } v ? v.Value switch
        {
            long l => l,
            double d => d,
            BigInteger b => (double)b,
            _ => null,
        } : null;
        return s is > 0 && s <= max
            ? TimeSpan.FromSeconds(s.Value)
            : throw Fail(key, $"must be a number of seconds above 0, at most {max.ToString(CultureInfo.InvariantCulture)}, not {Describe(token)}");
    }

    /// <summary>A string that <paramref name="parse"/> turns into a value (null: unusable, <paramref name="problem"/>); null when absent.</summary>
    public T? Parse<T>(string key, Func<string, T?> parse, string problem) where T : class
    {
        string? text = String(key);
        if (text is null) return null;
        return parse(text) ?? throw Fail(key, $"{problem}, not \"{text}\"");
    }

    /// <summary>A string that <paramref name="parse"/> turns into a value type (null: unusable, <paramref name="problem"/>); null when absent.</summary>
    public T? ParseValue<T>(string key, Func<string, T?> parse, string problem) where T : struct
    {
        string? text = String(key);
        if (text is null) return null;
        return parse(text) ?? throw Fail(key, $"{problem}, not \"{text}\"");
    }

    /// <summary><c>host:port</c> (spec/ipc.md §3.5) with a non-zero port; null when absent.</summary>
    public Destination? Destination(string key) =>
        Parse(key, t => Contract.Destination.TryParse(t, out var d) && d.Port != 0 ? d : null, "must be \"host:port\"");

    /// <summary><c>ip:port</c> with an IP literal (IPv6 in brackets); port 0 allowed; null when absent.</summary>
    public IPEndPoint? EndPoint(string key) =>
        Parse(key, t => Contract.Destination.TryParse(t, out var d) && d.Address is not null ? new IPEndPoint(d.Address, d.Port) : null, "must be \"ip:port\"");

    /// <summary>An IP literal (strict dotted quad or IPv6); null when absent.</summary>
    public IPAddress? Address(string key) => Parse(key, Contract.Destination.ParseLiteral, "must be an IP literal");

    /// <summary>
    /// An array of strings, each turned into a value by <paramref name="parse"/> (null: unusable,
    /// <paramref name="problem"/>, reported at <c>key[i]</c>); null when absent.
    /// </summary>
    public IReadOnlyList<T>? List<T>(string key, Func<string, T?> parse, string problem, bool nonEmpty = false) where T : class
    {
        var token = Token(key);
        if (token is null) return null;
        if (token is not JArray a) throw Fail(key, $"must be an array of strings, not {Describe(token)}");
        if (nonEmpty && a.Count == 0) throw Fail(key, "must not be empty");
        var result = new List<T>(a.Count);
        for (int i = 0; i < a.Count; i++)
        {
            string at = $"{PathOf(key)}[{i}]";
            if (a[i].Type != JTokenType.String) throw new OptionsException(at, $"must be a string, not {Describe(a[i])}");
            result.Add(parse((string)a[i]!) ?? throw new OptionsException(at, $"{problem}, not \"{(string)a[i]!}\""));
        }
        return result;
    }

    /// <summary>An array of strings; null when absent.</summary>
    public IReadOnlyList<string>? Strings(string key, bool nonEmpty = false) => List(key, s => s, "", nonEmpty);

    /// <summary>The object at <paramref name="key"/>; <see cref="IsAbsent"/> when absent or null.</summary>
    public OptionsReader Object(string key) => For(Token(key), PathOf(key));

    /// <summary>How a value is named in messages: <c>a string</c>, <c>the number 5</c>, <c>null</c>, ...</summary>
    public static string Describe(JToken token) => token.Type switch
    {
        JTokenType.Object => "an object",
        JTokenType.Array => "an array",
        JTokenType.String => "a string",
        JTokenType.Null => "null",
        JTokenType.Boolean => (bool)token ? "true" : "false",
        JTokenType.Integer or JTokenType.Float => "the number " + StrictJson.Write(token),
        _ => token.Type.ToString(),
    };

    private static string Root(string path) => path.Length == 0 ? "(document)" : path;
}
