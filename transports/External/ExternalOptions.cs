using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.External;

/// <summary>The options of an external PT 1.0 transport (spec/external.md §4.2), validated once at start-up.</summary>
internal sealed record ExternalOptions(
    string Exec,
    IReadOnlyList<string> Args,
    string Method,
    Destination? ServerAddress,
    IReadOnlyList<KeyValuePair<string, string>> ServerOptions,
    TimeSpan StartTimeout,
    int MaxRestarts)
{
    public static readonly TimeSpan DefaultStartTimeout = TimeSpan.FromSeconds(30);
    public const int DefaultMaxRestarts = 5;

    public static ExternalOptions Parse(string transportName, JToken? options, bool client)
    {
        var r = OptionsReader.For(options, "options." + transportName);
        if (r.IsAbsent) throw r.Fail("is required: {\"exec\": \"/path/to/pt1-program\", \"args\": [...], \"method\": \"name\"}");
        if (client) r.RejectUnknown("exec", "args", "method", "serverAddress", "startTimeout", "maxRestarts");
        else r.RejectUnknown("exec", "args", "method", "serverOptions", "startTimeout", "maxRestarts");
        string exec = r.Require("exec", "the path of the PT 1.0 program").String("exec")!;
        if (exec.Length == 0) throw r.Fail("exec", "must be the path of the PT 1.0 program");
        if (!File.Exists(exec)) throw r.Fail("exec", $"{exec} does not exist");
        var args = r.Strings("args") ?? [];
        string? method = r.String("method")
            ?? (transportName.StartsWith(ExternalTransport.Prefix, StringComparison.Ordinal) ? transportName[ExternalTransport.Prefix.Length..] : null)
            ?? throw r.Fail("method", "is required: the PT 1.0 transport name the program provides");
        if (method.Length is 0 or > 64 || !method.All(c => char.IsAsciiLetterOrDigit(c) || c == '_'))
            throw r.Fail("method", "must be a PT 1.0 transport name ([A-Za-z0-9_]+)");
        var serverOptions = new List<KeyValuePair<string, string>>();
        var so = r.Object("serverOptions");
        foreach (string name in so.Keys)
        {
            if (name.Length == 0) throw so.Fail(name, "must have a non-empty name");
            serverOptions.Add(new(name, so.String(name)!));
        }
        return new ExternalOptions(exec, args, method, r.Destination("serverAddress"), serverOptions,
            r.Seconds("startTimeout", DefaultStartTimeout, 600), (int)r.Integer("maxRestarts", DefaultMaxRestarts, 0, 1000));
    }
}
