using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;

namespace PtHost.Client;

/// <summary>
/// A server pthost with one transport (spec/adapters.md §2.1, §5.5): <see cref="ListenAsync"/> a bound server
/// (sessions go to the application's <c>target</c>), <see cref="ProxyAsync"/> a free one (destinations from its
/// clients, limited by <c>allow</c>); <see cref="GenerateConfigAsync"/> the matching client and server options.
/// </summary>
public sealed class PtHostServer : PtHostInstance
{
    private string[] _transports = [];

    private PtHostServer() : base(server: true) { }

    public override IReadOnlyList<string> Transports => _transports;

    /// <summary>The <c>SMETHOD</c> address clients reach.</summary>
    public IPEndPoint EndPoint { get; private set; } = null!;

    /// <summary>The <c>SMETHOD</c> line's <c>ARGS:</c>, unescaped (e.g. zephyr's <c>pin</c>).</summary>
    public IReadOnlyDictionary<string, string> Args { get; private set; } = new Dictionary<string, string>();

    /// <summary><c>pthost generate-config &lt;transport&gt;</c> (spec/ipc.md §2.3): <c>{"client": {...}, "server": {...}}</c>.</summary>
    public static async Task<JsonObject> GenerateConfigAsync(string transport, PtHostOptions? options = null, CancellationToken ct = default)
    {
        var psi = new ProcessStartInfo(PtHostProcess.FindExecutable(options?.Executable))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("generate-config");
        psi.ArgumentList.Add(transport);
        using var p = Process.Start(psi) ?? throw new PtHostException("pthost did not start");
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        try
        {
            await p.WaitForExitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            p.Kill();
            throw;
        }
        string err = (await stderr.ConfigureAwait(false)).Trim();
        if (p.ExitCode != 0)
            throw new PtHostException(err.Split('\n').LastOrDefault(l => l.Length > 0) ?? $"pthost generate-config exited {p.ExitCode}");
        return JsonNode.Parse(await stdout.ConfigureAwait(false)) as JsonObject ?? throw new PtHostException("generate-config wrote no JSON object");
    }

    /// <summary>
    /// A bound server: every session goes to <paramref name="target"/> (<c>host:port</c>), the application's own
    /// listener. <paramref name="transportOptions"/> is <c>options.&lt;t&gt;</c>; <paramref name="document"/> further top-level keys.
    /// </summary>
    public static Task<PtHostServer> ListenAsync(string transport, JsonObject? transportOptions, string target,
        JsonObject? document = null, PtHostOptions? options = null, CancellationToken ct = default)
    {
        var config = Document(transport, transportOptions, document);
        config["target"] = target;
        return StartAsync(config, options, ct);
    }

    /// <summary>A free server: its clients name destinations, limited by <paramref name="allow"/> (spec/ipc.md §3.4).</summary>
    public static Task<PtHostServer> ProxyAsync(string transport, JsonObject? transportOptions, IEnumerable<string> allow,
        JsonObject? document = null, PtHostOptions? options = null, CancellationToken ct = default)
    {
        var config = Document(transport, transportOptions, document);
        config["allow"] = new JsonArray(allow.Select(a => (JsonNode)JsonValue.Create(a)!).ToArray());
        return StartAsync(config, options, ct);
    }

    private static JsonObject Document(string transport, JsonObject? transportOptions, JsonObject? document)
    {
        var config = (JsonObject?)document?.DeepClone() ?? [];
        config["transports"] = new JsonArray(transport);
        if (transportOptions is not null) config["options"] = new JsonObject { [transport] = transportOptions.DeepClone() };
        if (config["bindaddr"] is JsonValue v && v.ToString() is var addr)
            config["bindaddr"] = new JsonObject { [transport] = addr };
        return config;
    }

    /// <summary>Starts pthost with a whole server document (one transport).</summary>
    public static async Task<PtHostServer> StartAsync(JsonObject config, PtHostOptions? options = null, CancellationToken ct = default)
    {
        config = Prepare((JsonObject)config.DeepClone(), "server");
        if (config["transports"] is not JsonArray { Count: 1 } ts) throw new ArgumentException("a server runs exactly one transport", nameof(config));
        var server = new PtHostServer { _transports = [ts[0]!.ToString()] };
        try
        {
            var lines = await server.LaunchAsync(options ?? new PtHostOptions(), config, "SMETHODS DONE", ct).ConfigureAwait(false);
            if (lines.FirstOrDefault(l => l.StartsWith("SMETHOD-ERROR ", StringComparison.Ordinal)) is { } error) throw PtHostProcess.MethodError(error);
            var smethod = lines.First(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal)).Split(' ');
            server.EndPoint = IPEndPoint.Parse(smethod[2]);
            var args = new Dictionary<string, string>(StringComparer.Ordinal);
            if (smethod.Length > 3 && smethod[3].StartsWith("ARGS:", StringComparison.Ordinal))
                foreach (var (k, v) in SplitArgs(smethod[3]["ARGS:".Length..])) args[k] = v;
            server.Args = args;
            return server;
        }
        catch (TransportStartException)
        {
            await server.CloseAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>spec/ipc.md §4.5: <c>k=v,k=v</c> with <c>\</c> escaping <c>=</c>, <c>,</c> and <c>\</c>.</summary>
    internal static IEnumerable<(string, string)> SplitArgs(string s)
    {
        var key = new System.Text.StringBuilder();
        var value = new System.Text.StringBuilder();
        var current = key;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c == '\\' && i + 1 < s.Length) current.Append(s[++i]);
            else if (c == '=' && current == key) current = value;
            else if (c == ',')
            {
                yield return (key.ToString(), value.ToString());
                key.Clear();
                value.Clear();
                current = key;
            }
            else current.Append(c);
        }
        if (key.Length > 0) yield return (key.ToString(), value.ToString());
    }
}
