using System.Net;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

/// <summary><c>pthost relay zephyr</c> on 127.0.0.1 (port 0, read back from its <c>LISTEN</c> line).</summary>
public sealed class ZephyrRelayChild : IAsyncDisposable
{
    public required Child Child { get; init; }
    public required IPEndPoint EndPoint { get; init; }
    /// <summary>The whole LISTEN line (fields after the address: <c>metrics=</c>, <c>link=</c>).</summary>
    public string ListenLine { get; init; } = "";

    public static Task<ZephyrRelayChild> StartAsync(string pthost, string[]? options = null, IReadOnlyDictionary<string, string?>? env = null) =>
        LaunchAsync("pthost relay zephyr", pthost, ["relay", "zephyr", "--listen", "127.0.0.1:0", "--loglevel", "warning", .. options ?? []], env);

    /// <summary>The relay inside network namespace <paramref name="ns"/> (<c>ip netns exec</c>, which execs: the pid is the relay's), listening on <paramref name="listen"/>.</summary>
    public static Task<ZephyrRelayChild> StartInAsync(string ns, string pthost, string listen, string[] options) =>
        LaunchAsync("pthost relay zephyr (netns)", "ip", ["netns", "exec", ns, pthost, "relay", "zephyr", "--listen", listen, "--loglevel", "warning", .. options], null);

    private static async Task<ZephyrRelayChild> LaunchAsync(string name, string file, string[] args, IReadOnlyDictionary<string, string?>? env)
    {
        var child = Child.Start(name, file, args, Chain.ExtraEnvFor(env));
        try
        {
            var (_, line) = await child.WaitForLineAsync(l => l.StartsWith("LISTEN zephyr ", StringComparison.Ordinal), Chain.StartTimeout).ConfigureAwait(false);
            // The address is the first field; a relay with --metrics or a cluster link adds fields after it (spec/zephyr.md §5, §8.3).
            return new ZephyrRelayChild { Child = child, EndPoint = IPEndPoint.Parse(line["LISTEN zephyr ".Length..].Split(' ')[0]), ListenLine = line };
        }
        catch
        {
            await child.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        // The relay exits on SIGTERM, not on stdin close.
        Sys.Terminate(Child.Pid);
        try { await Child.WaitExitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { Child.Kill(); }
        await Child.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>
/// A zephyr server pthost (free: any destination on 127.0.0.1) and a zephyr client pthost using
/// <paramref name="relay"/>, configured from <c>pthost generate-config zephyr</c>, with every
/// CMESSAGE/SMESSAGE line carried between them by the harness as an application would.
/// </summary>
public sealed class ZephyrChain : IAsyncDisposable
{
    public required Child Server { get; init; }
    public required Child Client { get; init; }
    public required IPEndPoint Socks { get; init; }

    /// <param name="signals">A <c>"signals"</c> object (spec/rendezvous.md §7.1): both processes signal through that rendezvous and the harness carries no line.</param>
    public static async Task<ZephyrChain> StartAsync(string pthost, string stateRoot, IPEndPoint relay, JsonObject? signals = null)
    {
        var gen = await Child.RunAsync(pthost, ["generate-config", "zephyr"], TimeSpan.FromSeconds(30), Chain.ExtraEnvFor(null)).ConfigureAwait(false);
        if (gen.ExitCode != 0) throw new InvalidOperationException($"pthost generate-config zephyr exited {gen.ExitCode}: {gen.StderrTail}");
        var generated = JsonNode.Parse(gen.Stdout)!.AsObject();
        var clientOptions = generated["client"]!.DeepClone().AsObject();
        clientOptions["relay"] = relay.ToString();
        var serverOptions = generated["server"]!.DeepClone().AsObject();
        serverOptions["relay"] = relay.ToString(); // the server joins only relays it is told about
        var serverConfig = new JsonObject
        {
            ["role"] = "server",
            ["transports"] = new JsonArray("zephyr"),
            ["allow"] = new JsonArray("127.0.0.1"),
            ["options"] = new JsonObject { ["zephyr"] = serverOptions },
            ["state"] = Path.Combine(stateRoot, "server"),
            ["exit-on-stdin-close"] = true,
        };
        var clientConfig = new JsonObject
        {
            ["role"] = "client",
            ["transports"] = new JsonArray("zephyr"),
            ["options"] = new JsonObject { ["zephyr"] = clientOptions },
            ["state"] = Path.Combine(stateRoot, "client"),
            ["exit-on-stdin-close"] = true,
        };
        if (signals is not null)
        {
            serverConfig["signals"] = signals.DeepClone();
            clientConfig["signals"] = signals.DeepClone();
        }
        Child? server = null, client = null;
        server = Child.Start("pthost zephyr server", pthost, [serverConfig.ToJsonString()], Chain.ExtraEnvFor(null),
            observer: l => { if (l.StartsWith("SMESSAGE ", StringComparison.Ordinal) && client is { } c) _ = c.WriteLineAsync(l); });
        try
        {
            await server.WaitForLineAsync(l => l == "SMETHODS DONE", Chain.StartTimeout, Chain.IsIpcError).ConfigureAwait(false);
            var s = server;
            client = Child.Start("pthost zephyr client", pthost, [clientConfig.ToJsonString()], Chain.ExtraEnvFor(null),
                observer: l => { if (l.StartsWith("CMESSAGE ", StringComparison.Ordinal)) _ = s.WriteLineAsync(l); });
            var (_, line) = await client.WaitForLineAsync(l => l.StartsWith("CMETHOD zephyr ", StringComparison.Ordinal), Chain.StartTimeout, Chain.IsIpcError).ConfigureAwait(false);
            var socks = IPEndPoint.Parse(line.Split(' ')[3]);
            await client.WaitForLineAsync(l => l == "CMETHODS DONE", Chain.StartTimeout, Chain.IsIpcError).ConfigureAwait(false);
            return new ZephyrChain { Server = server, Client = client, Socks = socks };
        }
        catch
        {
            if (client is not null) await client.DisposeAsync().ConfigureAwait(false);
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Client.DisposeAsync().ConfigureAwait(false);
        await Server.DisposeAsync().ConfigureAwait(false);
    }
}
