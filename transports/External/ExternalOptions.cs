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
        string prefix = $"{transportName} option";
        if (options is not JObject o) throw new TransportOptionsException($"{transportName} needs options: {{\"exec\": \"/path/to/pt1-program\", \"args\": [...], \"method\": \"name\"}}");
        string? exec = null, method = null;
        var args = new List<string>();
        Destination? server = null;
        var serverOptions = new List<KeyValuePair<string, string>>();
        var startTimeout = DefaultStartTimeout;
        int maxRestarts = DefaultMaxRestarts;
        string[] known = client
            ? ["exec", "args", "method", "serverAddress", "startTimeout", "maxRestarts"]
            : ["exec", "args", "method", "serverOptions", "startTimeout", "maxRestarts"];
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "exec":
                    exec = p.Value.Type == JTokenType.String ? (string)p.Value! : throw new TransportOptionsException($"{prefix} \"exec\" must be a string (the program's path)");
                    break;
                case "args":
                    if (p.Value is not JArray a || a.Any(x => x.Type != JTokenType.String)) throw new TransportOptionsException($"{prefix} \"args\" must be an array of strings");
                    args.AddRange(a.Select(x => (string)x!));
                    break;
                case "method":
                    method = p.Value.Type == JTokenType.String ? (string)p.Value! : throw new TransportOptionsException($"{prefix} \"method\" must be a string");
                    break;
                case "serverAddress" when client:
                    if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                        throw new TransportOptionsException($"{prefix} \"serverAddress\" must be \"host:port\"");
                    break;
                case "serverOptions" when !client:
                    if (p.Value is not JObject so) throw new TransportOptionsException($"{prefix} \"serverOptions\" must be an object of strings");
                    foreach (var sp in so.Properties())
                    {
                        if (sp.Value.Type != JTokenType.String || sp.Name.Length == 0) throw new TransportOptionsException($"{prefix} \"serverOptions\" must be an object of strings");
                        serverOptions.Add(new(sp.Name, (string)sp.Value!));
                    }
                    break;
                case "startTimeout":
                    if (p.Value.Type is not (JTokenType.Integer or JTokenType.Float) || (double)p.Value is <= 0 or > 600)
                        throw new TransportOptionsException($"{prefix} \"startTimeout\" must be a number of seconds, more than 0 and at most 600");
                    startTimeout = TimeSpan.FromSeconds((double)p.Value);
                    break;
                case "maxRestarts":
                    if (p.Value.Type != JTokenType.Integer || (long)p.Value is < 0 or > 1000)
                        throw new TransportOptionsException($"{prefix} \"maxRestarts\" must be an integer 0-1000");
                    maxRestarts = (int)(long)p.Value;
                    break;
                default:
                    throw new TransportOptionsException($"{transportName} has no {(client ? "client" : "server")} option \"{p.Name}\" (known: {string.Join(", ", known)})");
            }
        }
        if (string.IsNullOrEmpty(exec)) throw new TransportOptionsException($"{prefix} \"exec\" is required: the path of the PT 1.0 program");
        if (!File.Exists(exec)) throw new TransportOptionsException($"{prefix} \"exec\": {exec} does not exist");
        method ??= transportName.StartsWith(ExternalTransport.Prefix, StringComparison.Ordinal) ? transportName[ExternalTransport.Prefix.Length..] : null;
        if (method is null) throw new TransportOptionsException($"{prefix} \"method\" is required: the PT 1.0 transport name the program provides");
        if (method.Length is 0 or > 64 || !method.All(c => char.IsAsciiLetterOrDigit(c) || c == '_'))
            throw new TransportOptionsException($"{prefix} \"method\" must be a PT 1.0 transport name ([A-Za-z0-9_]+)");
        return new ExternalOptions(exec, args, method, server, serverOptions, startTimeout, maxRestarts);
    }
}
