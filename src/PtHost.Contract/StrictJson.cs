using System.Text.Json;
using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>
/// Parses RFC 8259 JSON strictly (no comments, single quotes, unquoted names, trailing commas,
/// NaN/Infinity, leading zeros or duplicate names; nothing after the value) into Newtonsoft's
/// <see cref="JToken"/>. Integers outside the 64-bit range stay as numbers that
/// <see cref="TryGetInt64"/> refuses. Used for every JSON PtHost reads from outside.
/// </summary>
public static class StrictJson
{
    private static readonly JsonDocumentOptions Options = new()
    {
        AllowTrailingCommas = false,
        CommentHandling = JsonCommentHandling.Disallow,
        MaxDepth = 32,
        AllowDuplicateProperties = false,
    };

    /// <summary>Parses <paramref name="text"/>; throws <see cref="FormatException"/> saying what is wrong.</summary>
    public static JToken Parse(string text)
    {
        try
        {
            using var doc = JsonDocument.Parse(text, Options);
            return Convert(doc.RootElement);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException)
        {
            // InvalidOperationException: a string with a lone surrogate escape ("\ud800") cannot become UTF-16 text.
            throw new FormatException(e.Message, e);
        }
    }

    /// <summary>Parses a JSON object; throws <see cref="FormatException"/> for anything else.</summary>
    public static JObject ParseObject(string text) =>
        Parse(text) as JObject ?? throw new FormatException("not a JSON object");

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

    private static JToken Convert(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => new JObject(e.EnumerateObject().Select(p => new JProperty(p.Name, Convert(p.Value)))),
        JsonValueKind.Array => new JArray(e.EnumerateArray().Select(Convert)),
        JsonValueKind.String => new JValue(e.GetString()),
        JsonValueKind.Number => e.TryGetInt64(out long l) ? new JValue(l)
            : e.GetRawText().AsSpan().IndexOfAny(".eE") < 0 ? new JValue(System.Numerics.BigInteger.Parse(e.GetRawText(), System.Globalization.CultureInfo.InvariantCulture))
            : new JValue(e.GetDouble()),
        JsonValueKind.True => new JValue(true),
        JsonValueKind.False => new JValue(false),
        _ => JValue.CreateNull(),
    };
}
