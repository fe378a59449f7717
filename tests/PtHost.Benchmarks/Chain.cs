using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

/// <summary>A pthost plain server bound to a target, and a pthost client pointing at it, on 127.0.0.1.</summary>
public sealed class Chain : IAsyncDisposable
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(20);

    /// <summary>Environment added to every pthost started (--pthost-env K=V), for experiments such as DOTNET_ settings.</summary>
    public static Dictionary<string, string?> ExtraEnv { get; } = [];

    /// <summary>The environment for a pthost child: <see cref="ExtraEnv"/> plus <paramref name="env"/>.</summary>
    public static Dictionary<string, string?> ExtraEnvFor(IReadOnlyDictionary<string, string?>? env) => Env(env);

    private static Dictionary<string, string?> Env(IReadOnlyDictionary<string, string?>? env)
    {
        var merged = new Dictionary<string, string?>(ExtraEnv);
        if (env is not null)
            foreach (var (k, v) in env)
                if (v is not null || !merged.ContainsKey(k)) merged[k] = v;
        return merged;
    }

    public required Child Server { get; init; }
    public required Child Client { get; init; }
    public required IPEndPoint Socks { get; init; }
    public required int ServerPort { get; init; }
    /// <summary>The client's and server's Prometheus endpoints (spec/ipc.md §4.12) when started with metrics.</summary>
    public IPEndPoint[] Metrics { get; init; } = [];

    public static async Task<Chain> StartAsync(string pthost, string stateRoot, int targetPort, bool noSplice, bool metrics = false)
    {
        var env = new Dictionary<string, string?> { ["PTHOST_NO_SPLICE"] = noSplice ? "1" : null };
        JsonObject? extra = metrics ? new JsonObject { ["metrics"] = "127.0.0.1:0" } : null;
        var (server, serverPort, _) = await StartServerAsync(pthost, stateRoot, "target", JsonValue.Create($"127.0.0.1:{targetPort}"), env, extra).ConfigureAwait(false);
        try
        {
            var (client, socksPort, _) = await StartClientAsync(pthost, stateRoot, serverPort, env, extra: extra?.DeepClone().AsObject()).ConfigureAwait(false);
            IPEndPoint[] endpoints = [];
            if (metrics)
            {
                static async Task<IPEndPoint> MetricsOf(Child c) =>
                    IPEndPoint.Parse((await c.WaitForLineAsync(l => l.StartsWith("STATUS TYPE=metrics ADDRESS=", StringComparison.Ordinal), StartTimeout).ConfigureAwait(false)).Line["STATUS TYPE=metrics ADDRESS=".Length..]);
                endpoints = [await MetricsOf(client).ConfigureAwait(false), await MetricsOf(server).ConfigureAwait(false)];
            }
            return new Chain { Server = server, Client = client, Socks = new IPEndPoint(IPAddress.Loopback, socksPort), ServerPort = serverPort, Metrics = endpoints };
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public static bool IsIpcError(string line) =>
        line.StartsWith("ENV-ERROR", StringComparison.Ordinal) || line.StartsWith("VERSION-ERROR", StringComparison.Ordinal)
        || line.StartsWith("SMETHOD-ERROR", StringComparison.Ordinal) || line.StartsWith("CMETHOD-ERROR", StringComparison.Ordinal);

    /// <summary>Starts a bound plain server; returns it, its port, and the time from start to <c>SMETHODS DONE</c>.</summary>
    public static Task<(Child Child, int Port, TimeSpan Startup)> StartServerAsync(string pthost, string stateRoot, string target, IReadOnlyDictionary<string, string?>? env) =>
        StartServerAsync(pthost, stateRoot, "target", JsonValue.Create(target), env);

    /// <summary>Starts a free plain server that may reach the <paramref name="allow"/> entries (spec/ipc.md §3.4).</summary>
    public static Task<(Child Child, int Port, TimeSpan Startup)> StartFreeServerAsync(string pthost, string stateRoot, string[] allow, IReadOnlyDictionary<string, string?>? env) =>
        StartServerAsync(pthost, stateRoot, "allow", new JsonArray([.. allow.Select(a => (JsonNode)JsonValue.Create(a))]), env);

    private static async Task<(Child Child, int Port, TimeSpan Startup)> StartServerAsync(string pthost, string stateRoot, string destinationKey, JsonNode destination, IReadOnlyDictionary<string, string?>? env,
        JsonObject? extra = null)
    {
        var config = new JsonObject
        {
            ["role"] = "server",
            ["transports"] = new JsonArray("plain"),
            [destinationKey] = destination,
            ["state"] = Path.Combine(stateRoot, "server"),
            ["exit-on-stdin-close"] = true,
        };
        foreach (var (k, v) in extra ?? []) config[k] = v?.DeepClone();
        var child = Child.Start("pthost server", pthost, [config.ToJsonString()], Env(env));
        try
        {
            var (_, line) = await child.WaitForLineAsync(l => l.StartsWith("SMETHOD plain ", StringComparison.Ordinal), StartTimeout, IsIpcError).ConfigureAwait(false);
            int port = PortOf(line.Split(' ')[2]);
            var (done, _) = await child.WaitForLineAsync(l => l == "SMETHODS DONE", StartTimeout, IsIpcError).ConfigureAwait(false);
            return (child, port, Stopwatch.GetElapsedTime(child.StartTimestamp, done));
        }
        catch
        {
            await child.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Starts a plain client; returns it, its SOCKS port, and the time from start to <c>CMETHODS DONE</c>.
    /// With <paramref name="ownSession"/> it runs under setsid(1), as an application adapter starts it:
    /// with the kernel's autogroup scheduling a session is its own CPU group, so a comparison with an
    /// adapter's pthost must put both in sessions of their own.
    /// </summary>
    public static async Task<(Child Child, int SocksPort, TimeSpan Startup)> StartClientAsync(string pthost, string stateRoot, int serverPort,
        IReadOnlyDictionary<string, string?>? env, bool ownSession = false, JsonObject? extra = null)
    {
        var config = new JsonObject
        {
            ["role"] = "client",
            ["transports"] = new JsonArray("plain"),
            ["options"] = new JsonObject { ["plain"] = new JsonObject { ["serverAddress"] = $"127.0.0.1:{serverPort}" } },
            ["state"] = Path.Combine(stateRoot, "client"),
            ["exit-on-stdin-close"] = true,
        };
        foreach (var (k, v) in extra ?? []) config[k] = v?.DeepClone();
        // setsid(1) execs in place (the child is no group leader), so the pid is pthost's.
        var child = ownSession
            ? Child.Start("pthost client", Sys.Which("setsid") ?? throw new InvalidOperationException("setsid (util-linux) not found"),
                [pthost, config.ToJsonString()], Env(env))
            : Child.Start("pthost client", pthost, [config.ToJsonString()], Env(env));
        try
        {
            var (_, line) = await child.WaitForLineAsync(l => l.StartsWith("CMETHOD plain ", StringComparison.Ordinal), StartTimeout, IsIpcError).ConfigureAwait(false);
            var parts = line.Split(' ');
            if (parts.Length < 4 || parts[2] != "socks5") throw new InvalidOperationException($"unexpected line \"{line}\"");
            int port = PortOf(parts[3]);
            var (done, _) = await child.WaitForLineAsync(l => l == "CMETHODS DONE", StartTimeout, IsIpcError).ConfigureAwait(false);
            return (child, port, Stopwatch.GetElapsedTime(child.StartTimestamp, done));
        }
        catch
        {
            await child.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static int PortOf(string hostPort) =>
        int.Parse(hostPort[(hostPort.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture);

    public async ValueTask DisposeAsync()
    {
        // Client first (it holds connections into the server), both with a bounded grace period.
        await Client.DisposeAsync().ConfigureAwait(false);
        await Server.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>A minimal SOCKS5 CONNECT client (no authentication), as a load generator needs it.</summary>
public static class Socks5Client
{
    /// <summary>Connects through <paramref name="proxy"/> to <paramref name="destination"/>; returns the socket once the success reply is read.</summary>
    public static async Task<Socket> ConnectAsync(IPEndPoint proxy, IPEndPoint destination, CancellationToken ct)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await s.ConnectAsync(proxy, ct).ConfigureAwait(false);
            byte[] buf = new byte[32];
            buf[0] = 5; buf[1] = 1; buf[2] = 0;
            await SendAllAsync(s, buf.AsMemory(0, 3), ct).ConfigureAwait(false);
            await ReceiveExactlyAsync(s, buf.AsMemory(0, 2), ct).ConfigureAwait(false);
            if (buf[0] != 5 || buf[1] != 0) throw new IOException($"SOCKS method reply {buf[0]:x2} {buf[1]:x2}");
            buf[0] = 5; buf[1] = 1; buf[2] = 0; buf[3] = 1;
            destination.Address.MapToIPv4().TryWriteBytes(buf.AsSpan(4, 4), out _);
            buf[8] = (byte)(destination.Port >> 8); buf[9] = (byte)destination.Port;
            await SendAllAsync(s, buf.AsMemory(0, 10), ct).ConfigureAwait(false);
            await ReceiveExactlyAsync(s, buf.AsMemory(0, 4), ct).ConfigureAwait(false);
            if (buf[0] != 5 || buf[1] != 0) throw new IOException($"SOCKS reply 0x{buf[1]:x2}");
            int rest = buf[3] switch
            {
                1 => 4 + 2,
                4 => 16 + 2,
                3 => -1,
                _ => throw new IOException($"SOCKS reply address type {buf[3]}"),
            };
            if (rest < 0)
            {
                await ReceiveExactlyAsync(s, buf.AsMemory(0, 1), ct).ConfigureAwait(false);
                rest = buf[0] + 2;
            }
            byte[] tail = new byte[rest];
            await ReceiveExactlyAsync(s, tail, ct).ConfigureAwait(false);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private static async Task SendAllAsync(Socket s, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        while (!data.IsEmpty)
        {
            int n = await s.SendAsync(data, SocketFlags.None, ct).ConfigureAwait(false);
            data = data[n..];
        }
    }

    private static async Task ReceiveExactlyAsync(Socket s, Memory<byte> into, CancellationToken ct)
    {
        while (!into.IsEmpty)
        {
            int n = await s.ReceiveAsync(into, SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0) throw new EndOfStreamException("proxy closed during the SOCKS handshake");
            into = into[n..];
        }
    }
}
