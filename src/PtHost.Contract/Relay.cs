using System.Globalization;
using System.Net;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>
/// A relay service a transport contributes: <c>pthost relay NAME</c> (spec/ipc.md §2.4). The
/// executable builds the subcommand from <see cref="Options"/> (with <c>--help</c> and
/// <c>--loglevel</c>), runs the relay under its host (logging, SIGTERM/SIGINT), and writes the
/// <c>LISTEN</c> and <c>STATUS</c> lines on stdout; it knows nothing else of the relay.
/// </summary>
public interface IRelayService
{
    /// <summary>The subcommand: <c>pthost relay &lt;Name&gt;</c>, and the second word of the LISTEN line.</summary>
    string Name { get; }

    /// <summary>One line for <c>--help</c>, naming the spec section.</summary>
    string Description { get; }

    /// <summary>The relay's command-line options, as data; the executable parses and checks them (§2.4).</summary>
    IReadOnlyList<RelayOption> Options { get; }

    /// <summary>
    /// Reads the arguments and any configuration file they name; binds nothing. Throws
    /// <see cref="TransportOptionsException"/> or <see cref="OptionsException"/> for a bad configuration (exit 78) and
    /// <see cref="PlatformNotSupportedException"/> when the relay cannot run here (exit 69).
    /// </summary>
    IRelay Create(RelayArguments arguments, ILoggerFactory loggerFactory);

    /// <summary>
    /// True when every socket continuation of the relay is short and never blocks (a splice loop, a bind lookup):
    /// the executable then runs them on the socket event threads instead of handing each to the thread pool
    /// (spec/zephyr.md §8.7). False by default.
    /// </summary>
    bool InlineSocketCompletions => false;
}

/// <summary>A relay created by <see cref="IRelayService.Create"/>. Disposing it closes every listener and connection and logs its final counters.</summary>
public interface IRelay : IAsyncDisposable
{
    /// <summary>Binds every listener and starts serving. Throws <see cref="System.Net.Sockets.SocketException"/> or <see cref="IOException"/> when an address cannot be bound (exit 69).</summary>
    Task StartAsync(CancellationToken cancellationToken);

    /// <summary>What follows <c>LISTEN &lt;name&gt; </c> once started: the bound address first, then anything clients need (spec of the relay).</summary>
    string ListenText { get; }

    /// <summary>How often the executable writes a <c>STATUS</c> line (and one more at shutdown); null: the relay has none.</summary>
    TimeSpan? StatusInterval { get; }

    /// <summary>The fields of a STATUS line, after <c>STATUS </c>: <c>TRANSPORT=&lt;name&gt; K=V ...</c>.</summary>
    string StatusText();
}

/// <summary>What kind of value a relay option takes; the executable reads every kind the same way for every relay.</summary>
public enum RelayOptionKind
{
    /// <summary><c>IP:PORT</c> with an IP literal (spec/ipc.md §3.5); port 0 lets the system choose.</summary>
    EndPoint,
    /// <summary>A number of seconds above 0, at most 86400; fractions allowed.</summary>
    Seconds,
    /// <summary>A whole number from 1 to 2147483647.</summary>
    Count,
    /// <summary>A file path, relative to the working directory; the relay reads it.</summary>
    File,
    /// <summary>A switch without a value: given or not.</summary>
    Flag,
    /// <summary>A name: 1 to 64 characters from A–Z, a–z, 0–9, <c>.</c>, <c>_</c> and <c>-</c> (an instance id, spec/ipc.md §4.12).</summary>
    Name,
}

/// <summary>One option of <c>pthost relay NAME</c>: <c>--&lt;Name&gt; VALUE</c>.</summary>
/// <param name="Name">The long name without the dashes, e.g. <c>bind-timeout</c>.</param>
/// <param name="Kind">How the value is read and checked.</param>
/// <param name="Help">One line for <c>--help</c>.</param>
/// <param name="Default">The value, in command-line text, when the option is not given; null: none.</param>
/// <param name="Required">The option must be given.</param>
public sealed record RelayOption(string Name, RelayOptionKind Kind, string Help, string? Default = null, bool Required = false)
{
    /// <summary>The value's placeholder in usage text.</summary>
    public string ValueName => Kind switch
    {
        RelayOptionKind.EndPoint => "IP:PORT",
        RelayOptionKind.Seconds => "SECONDS",
        RelayOptionKind.Count => "N",
        RelayOptionKind.Flag => "",
        RelayOptionKind.Name => "NAME",
        _ => "FILE",
    };

    /// <summary>Reads <paramref name="text"/> as this option's kind; on failure <paramref name="problem"/> names the option and says what is wrong.</summary>
    public bool TryRead(string text, out object? value, out string? problem)
    {
        value = null;
        problem = null;
        switch (Kind)
        {
            case RelayOptionKind.EndPoint:
                if (Destination.TryParse(text, out var d) && d.Address is not null) value = new IPEndPoint(d.Address, d.Port);
                else problem = $"--{Name} \"{text}\" is not IP:PORT";
                break;
            case RelayOptionKind.Seconds:
                if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s > 0 && s <= 86_400) value = TimeSpan.FromSeconds(s);
                else problem = $"--{Name} \"{text}\" is not a positive number of seconds (at most 86400)";
                break;
            case RelayOptionKind.Count:
                if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0) value = n;
                else problem = $"--{Name} \"{text}\" is not a positive integer";
                break;
            case RelayOptionKind.Flag:
                if (bool.TryParse(text, out bool on)) value = on;
                else problem = $"--{Name} takes no value";
                break;
            case RelayOptionKind.Name:
                if (text.Length is > 0 and <= 64 && text.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-')) value = text;
                else problem = $"--{Name} \"{text}\" is not a name (1 to 64 of A-Z a-z 0-9 . _ -)";
                break;
            default:
                if (text.Length > 0 && !text.Contains('\0', StringComparison.Ordinal)) value = text;
                else problem = $"--{Name} \"{text}\" is not a file path";
                break;
        }
        return problem is null;
    }
}

/// <summary>The values of a relay's options: given on the command line, else their defaults.</summary>
public sealed class RelayArguments
{
    private readonly Dictionary<string, object?> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _given = new(StringComparer.Ordinal);

    private RelayArguments() { }

    /// <summary>
    /// Reads <paramref name="given"/> (option name → command-line text) against <paramref name="options"/>.
    /// Throws <see cref="FormatException"/> naming the first option that is unknown, missing or unreadable.
    /// </summary>
    public static RelayArguments Read(IReadOnlyList<RelayOption> options, IReadOnlyDictionary<string, string> given)
    {
        var r = new RelayArguments();
        foreach (string name in given.Keys)
            if (!options.Any(o => o.Name == name)) throw new FormatException($"unknown option \"--{name}\"");
        foreach (var o in options)
        {
            if (given.TryGetValue(o.Name, out string? text)) r._given.Add(o.Name);
            else if (o.Required) throw new FormatException($"--{o.Name} {o.ValueName} is required");
            else text = o.Default;
            if (text is null) continue;
            if (!o.TryRead(text, out object? value, out string? problem)) throw new FormatException(problem);
            r._values[o.Name] = value;
        }
        return r;
    }

    /// <summary>
    /// Reads the options file of a relay that has no configuration file of its own
    /// (<c>pthost relay NAME --config FILE</c>, spec/ipc.md §2.4): a JSON object whose keys are the
    /// option names; a string for any option, a number for seconds and counts, true or false for a
    /// flag, read and checked by its kind as on the command line. Returns option name → text. Throws <see cref="OptionsException"/> naming the key.
    /// </summary>
    public static IReadOnlyDictionary<string, string> ReadFile(IReadOnlyList<RelayOption> options, string json)
    {
        var r = OptionsReader.Parse(json);
        r.RejectUnknown(options.Select(o => o.Name).ToArray());
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string key in r.Keys)
        {
            var option = options.First(o => o.Name == key);
            var token = r.Token(key)!;
            string text = token.Type switch
            {
                JTokenType.String => (string)token!,
                JTokenType.Integer or JTokenType.Float when option.Kind is RelayOptionKind.Seconds or RelayOptionKind.Count
                    => StrictJson.Write(token),
                JTokenType.Boolean when option.Kind is RelayOptionKind.Flag => (bool)token ? "true" : "false",
                _ => throw r.Fail(key, option.Kind switch
                {
                    RelayOptionKind.Seconds or RelayOptionKind.Count => $"must be a number or a string, not {OptionsReader.Describe(token)}",
                    RelayOptionKind.Flag => $"must be true or false, not {OptionsReader.Describe(token)}",
                    _ => $"must be a string, not {OptionsReader.Describe(token)}",
                }),
            };
            // The command line's wording without its "--name ": the path already names the key.
            if (!option.TryRead(text, out _, out string? problem)) throw r.Fail(key, problem![(option.Name.Length + 3)..]);
            values[key] = text;
        }
        return values;
    }

    /// <summary>Whether the option was on the command line (not just its default).</summary>
    public bool IsGiven(string name) => _given.Contains(name);

    /// <summary>An <see cref="RelayOptionKind.EndPoint"/> option's value; null when neither given nor defaulted.</summary>
    public IPEndPoint? EndPoint(string name) => Get<IPEndPoint>(name);

    /// <summary>A <see cref="RelayOptionKind.Seconds"/> option's value.</summary>
    public TimeSpan Seconds(string name) => Get<TimeSpan?>(name) ?? throw Missing(name);

    /// <summary>A <see cref="RelayOptionKind.Count"/> option's value.</summary>
    public int Count(string name) => Get<int?>(name) ?? throw Missing(name);

    /// <summary>A <see cref="RelayOptionKind.Flag"/> option: true when given.</summary>
    public bool Flag(string name) => Get<bool?>(name) ?? false;

    /// <summary>A <see cref="RelayOptionKind.Name"/> option's value; null when absent.</summary>
    public string? Name(string name) => Get<string>(name);

    /// <summary>A <see cref="RelayOptionKind.File"/> option's path as given; null when absent.</summary>
    public string? File(string name) => Get<string>(name);

    private T? Get<T>(string name) => _values.TryGetValue(name, out object? v) ? (T?)v : default;

    private static InvalidOperationException Missing(string name) => new($"relay option --{name} has no value and no default");
}
