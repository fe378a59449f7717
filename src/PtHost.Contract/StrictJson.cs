using System.Buffers;
using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;
using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>
/// The one JSON parser for every JSON text PtHost reads from outside (spec/ipc.md §3.1): RFC 8259
/// strictly — no comments, single quotes, unquoted names, trailing commas, NaN/Infinity, leading
/// zeros, duplicate names in one object, lone surrogate escapes or text after the value; nesting at
/// most 32. One pass: System.Text.Json's <see cref="Utf8JsonReader"/> tokenizes (it is strict and
/// reflection-free), and the tokens become Newtonsoft <see cref="JToken"/>s, the contract's JSON
/// type, directly. (Newtonsoft's own reader accepts every one of the forms above except duplicate
/// names, even with <c>JsonLoadSettings</c>.) Integers outside the 64-bit range stay exact numbers
/// that <see cref="TryGetInt64"/> refuses; a number with a fraction or exponent is a double.
/// </summary>
public static class StrictJson
{
    /// <summary>Deepest nesting accepted.</summary>
    public const int MaxDepth = 32;

    private static readonly JsonReaderOptions Options = new()
    {
        AllowTrailingCommas = false,
        CommentHandling = JsonCommentHandling.Disallow,
        MaxDepth = MaxDepth,
    };

    /// <summary>Parses <paramref name="text"/>; throws <see cref="StrictJsonException"/> saying what is wrong and where.</summary>
    public static JToken Parse(string text)
    {
        int max = Encoding.UTF8.GetMaxByteCount(text.Length);
        byte[]? rented = max > 1024 ? ArrayPool<byte>.Shared.Rent(max) : null;
        Span<byte> buffer = rented ?? stackalloc byte[1024];
        try
        {
            int length = Encoding.UTF8.GetBytes(text, buffer);
            return Parse(buffer[..length]);
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Parses UTF-8 <paramref name="utf8"/>; throws <see cref="StrictJsonException"/> saying what is wrong and where.</summary>
    public static JToken Parse(ReadOnlySpan<byte> utf8)
    {
        var reader = new Utf8JsonReader(utf8, Options);
        var at = new List<Step>();
        try
        {
            if (!reader.Read()) throw new StrictJsonException("", "no JSON value");
            var value = ReadValue(ref reader, at);
            // The reader refuses anything but white space after the value (one value per text).
            if (reader.Read()) throw new StrictJsonException("", $"text after the JSON value at byte {reader.TokenStartIndex}");
            return value;
        }
        catch (JsonException e)
        {
            throw new StrictJsonException(PathOf(at), e.Message, e);
        }
        catch (InvalidOperationException e)
        {
            // A string with a lone surrogate escape ("\ud800") cannot become UTF-16 text.
            throw new StrictJsonException(PathOf(at), e.Message, e);
        }
    }

    /// <summary>Parses a JSON object; throws <see cref="StrictJsonException"/> for anything else.</summary>
    public static JObject ParseObject(string text) =>
        Parse(text) as JObject ?? throw new StrictJsonException("", "not a JSON object");

    /// <summary>
    /// The JSON text of <paramref name="token"/>, exactly as Newtonsoft's <c>JToken.ToString(Formatting)</c>
    /// writes it (same escaping, same numbers; indented: two spaces, <c>"name": value</c>). Use this,
    /// not <c>ToString</c>: <c>JToken.WriteTo</c> can hand values to Newtonsoft's reflection-based
    /// serializer, which a NativeAOT build cannot carry (packaging/README.md); this walk writes every
    /// token through <see cref="Newtonsoft.Json.JsonTextWriter"/>'s primitive writers only.
    /// </summary>
    public static string Write(JToken token, bool indented = false)
    {
        using var text = new StringWriter(CultureInfo.InvariantCulture);
        using (var writer = new Newtonsoft.Json.JsonTextWriter(text) { Formatting = indented ? Newtonsoft.Json.Formatting.Indented : Newtonsoft.Json.Formatting.None })
            WriteToken(writer, token);
        return text.ToString();
    }

    private static void WriteToken(Newtonsoft.Json.JsonTextWriter writer, JToken token)
    {
        switch (token)
        {
            case JObject o:
                writer.WriteStartObject();
                foreach (var p in o.Properties())
                {
                    writer.WritePropertyName(p.Name);
                    WriteToken(writer, p.Value);
                }
                writer.WriteEndObject();
                break;
            case JArray a:
                writer.WriteStartArray();
                foreach (var item in a) WriteToken(writer, item);
                writer.WriteEndArray();
                break;
            case JValue v:
                switch (v.Value)
                {
                    case null: writer.WriteNull(); break;
                    case string s: writer.WriteValue(s); break;
                    case bool b: writer.WriteValue(b); break;
                    case long l: writer.WriteValue(l); break;
                    case int i: writer.WriteValue(i); break;
                    case double d: writer.WriteValue(d); break;
                    case BigInteger n: writer.WriteRawValue(n.ToString(CultureInfo.InvariantCulture)); break;
                    // Tokens built in code from other CLR values (dates, GUIDs, ...): their invariant text, as a string.
                    case IFormattable f: writer.WriteValue(f.ToString(null, CultureInfo.InvariantCulture)); break;
                    case var other: writer.WriteValue(other.ToString()); break;
                }
                break;
            default:
                throw new ArgumentException($"cannot write a {token.Type} token as JSON", nameof(token));
        }
    }

    /// <summary>The token's value when it is an integer that fits in 64 bits.</summary>
    public static bool TryGetInt64(JToken? token, out long value)
    {
        if (token is JValue { Type: JTokenType.Integer, Value: long l })
        {
            value = l;
            return true;
        }
        value = 0;
        return false;
    }

    /// <summary>One step from a value to a member (<see cref="Name"/>) or an array element (<see cref="Index"/>).</summary>
    private readonly record struct Step(string? Name, int Index);

    private static string PathOf(List<Step> at)
    {
        string path = "";
        foreach (var step in at) path = step.Name is { } name ? OptionsReader.Child(path, name) : $"{path}[{step.Index}]";
        return path;
    }

    /// <summary>The value at the reader's current token, reading to the end of it; <paramref name="at"/> is where it is (for errors).</summary>
    private static JToken ReadValue(ref Utf8JsonReader reader, List<Step> at)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.StartObject:
                var o = new JObject();
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    string name = reader.GetString()!;
                    at.Add(new(name, 0));
                    if (o.ContainsKey(name)) throw new StrictJsonException(PathOf(at), "appears twice in one object (duplicate member name)");
                    reader.Read();
                    o.Add(name, ReadValue(ref reader, at));
                    at.RemoveAt(at.Count - 1);
                }
                return o;
            case JsonTokenType.StartArray:
                var a = new JArray();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    at.Add(new(null, a.Count));
                    a.Add(ReadValue(ref reader, at));
                    at.RemoveAt(at.Count - 1);
                }
                return a;
            case JsonTokenType.String:
                return new JValue(reader.GetString());
            case JsonTokenType.Number:
                if (reader.TryGetInt64(out long l)) return new JValue(l);
                var raw = reader.ValueSpan; // the reader runs over one span: never a value sequence
                if (raw.IndexOfAny(".eE"u8) < 0)
                    return new JValue(BigInteger.Parse(Encoding.UTF8.GetString(raw), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture));
                return reader.TryGetDouble(out double d) && double.IsFinite(d)
                    ? new JValue(d)
                    : throw new StrictJsonException(PathOf(at), $"number {Encoding.UTF8.GetString(raw)} is out of range");
            case JsonTokenType.True:
                return new JValue(true);
            case JsonTokenType.False:
                return new JValue(false);
            default:
                return JValue.CreateNull();
        }
    }
}

/// <summary>A JSON text is not RFC 8259 JSON (spec/ipc.md §3.1); <see cref="Path"/> says where.</summary>
/// <param name="path">The member or element where the problem was found, as <see cref="OptionsReader"/> names keys (e.g. <c>options.plain.a</c>, <c>allow[2]</c>); empty for the top level.</param>
/// <param name="problem">What is wrong.</param>
/// <param name="inner">The tokenizer's exception, if any.</param>
public sealed class StrictJsonException(string path, string problem, Exception? inner = null)
    : FormatException(path.Length == 0 ? problem : $"{path}: {problem}", inner)
{
    /// <summary>Where the problem was found; empty for the top level.</summary>
    public string Path { get; } = path;

    /// <summary>What is wrong.</summary>
    public string Problem { get; } = problem;
}
