using System.Net;
using Newtonsoft.Json.Linq;

namespace PtHost.Testing;

/// <summary>
/// A real server pthost and a real client pthost, with CMESSAGE/SMESSAGE lines carried between
/// them by the test as an application would (spec/ipc.md §6).
/// </summary>
public sealed class PtChain : IAsyncDisposable
{
    public PtProcess Server { get; }
    public PtProcess Client { get; }
    public IPEndPoint ServerEndPoint { get; private set; } = null!;
    /// <summary>The client's front end: SOCKS5, or in a transparent mode its listener (spec/ipc.md §12).</summary>
    public IPEndPoint SocksEndPoint { get; private set; } = null!;
    public List<string> ServerStartup { get; private set; } = [];
    public List<string> ClientStartup { get; private set; } = [];
    private readonly CancellationTokenSource _cts = new();
    private Task? _relay;

    private PtChain(PtProcess server, PtProcess client)
    {
        Server = server;
        Client = client;
    }

    /// <summary>
    /// Starts the server, then the client (with <c>serverAddress</c> pointing at it unless <paramref name="clientConfig"/>
    /// says otherwise). With <paramref name="fdLimit"/>, both run with that RLIMIT_NOFILE (soft and hard). <paramref name="clientEnvironment"/>:
    /// variables set for the client process only (e.g. <c>SSL_CERT_FILE</c>).
    /// </summary>
    public static async Task<PtChain> StartAsync(JObject serverConfig, Func<IPEndPoint, JObject> clientConfig, bool relayMessages = true, ulong? fdLimit = null,
        IDictionary<string, string>? clientEnvironment = null)
    {
        PtProcess Start(JObject config, IDictionary<string, string>? env = null) => fdLimit is { } limit
            ? PtProcess.StartPthostWithFdLimit(limit, config.ToString(Newtonsoft.Json.Formatting.None))
            : env is null ? PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None))
            : PtProcess.Start(PtHostExecutable.Path, [config.ToString(Newtonsoft.Json.Formatting.None)], env);
        var server = Start(serverConfig);
        PtProcess? client = null;
        try
        {
            var serverLines = await server.ReadUntilDoneAsync();
            var smethod = serverLines.Single(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal));
            var serverEp = IPEndPoint.Parse(smethod.Split(' ')[2]);
            client = Start(clientConfig(serverEp), clientEnvironment);
            var clientLines = await client.ReadUntilDoneAsync();
            var cmethod = clientLines.Single(l => l.StartsWith("CMETHOD ", StringComparison.Ordinal) && l.Split(' ')[2] is "socks5" or "transparent-TCP" or "transparent-UDP" or "STUN");
            var chain = new PtChain(server, client)
            {
                ServerEndPoint = serverEp,
                SocksEndPoint = IPEndPoint.Parse(cmethod.Split(' ')[3]),
                ServerStartup = serverLines,
                ClientStartup = clientLines,
            };
            if (relayMessages) chain.StartRelay(serverLines.Concat(clientLines));
            return chain;
        }
        catch
        {
            await server.DisposeAsync();
            if (client is not null) await client.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// The chain once the client has learned the server's announced address (an asport client logs
    /// "learned from SMESSAGE"): the chain carries SMESSAGE lines asynchronously, and a session started
    /// before would take its SOCKS destination as the server address (spec/asport.md §6.2). Disposes the
    /// chain when the line never comes.
    /// </summary>
    public static async Task<PtChain> AnnouncedAsync(Task<PtChain> starting)
    {
        var chain = await starting;
        try
        {
            await chain.Client.WaitForStderrAsync("learned from SMESSAGE");
            return chain;
        }
        catch
        {
            await chain.DisposeAsync();
            throw;
        }
    }

    public static JObject FreeServer(string transport = "plain", params string[] allow) => new()
    {
        ["role"] = "server",
        ["transports"] = new JArray(transport),
        ["allow"] = new JArray(allow.Length == 0 ? ["127.0.0.1"] : allow),
        ["exit-on-stdin-close"] = true,
    };

    public static JObject BoundServer(string target, string transport = "plain") => new()
    {
        ["role"] = "server",
        ["transports"] = new JArray(transport),
        ["target"] = target,
        ["exit-on-stdin-close"] = true,
    };

    public static JObject ClientWith(JObject? plainOptions) => new()
    {
        ["role"] = "client",
        ["transports"] = new JArray("plain"),
        ["options"] = plainOptions is null ? new JObject() : new JObject { ["plain"] = plainOptions },
        ["exit-on-stdin-close"] = true,
    };

    /// <summary>A client of <paramref name="transport"/> with <paramref name="options"/> as its options (a generated client block).</summary>
    public static JObject ClientOf(string transport, JObject options) => new()
    {
        ["role"] = "client",
        ["transports"] = new JArray(transport),
        ["options"] = new JObject { [transport] = options },
        ["exit-on-stdin-close"] = true,
    };

    /// <summary>A free server (allow 127.0.0.1) of <paramref name="transport"/> with <paramref name="options"/> as its options.</summary>
    public static JObject FreeServerOf(string transport, JObject options)
    {
        var config = FreeServer(transport);
        config["options"] = new JObject { [transport] = options };
        return config;
    }

    /// <summary><c>pthost generate-config TRANSPORT</c>: the matching "client" and "server" option blocks.</summary>
    public static async Task<JObject> GenerateConfigAsync(string transport)
    {
        await using var p = PtProcess.StartPthost("generate-config", transport);
        Assert.Equal(0, await p.WaitForExitAsync());
        return JObject.Parse(string.Join("\n", p.StdoutLines));
    }

    /// <summary>The transport the server announced (<c>SMETHOD t ADDRESS</c>).</summary>
    public string Transport => ServerStartup.First(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal)).Split(' ')[1];

    /// <summary>Waits until both processes say (STATUS, spec/ipc.md §4.7) that no session is open.</summary>
    public async Task SessionsClosedAsync()
    {
        await Client.SessionsClosedAsync(Transport);
        await Server.SessionsClosedAsync(Transport);
    }

    /// <summary>
    /// The baseline of a leak check: no session open in either process (STATUS), then the sockets and pipes of
    /// the client, the server and <paramref name="others"/> (a relay) once they are at rest, in that order.
    /// </summary>
    public async Task<int[]> SocketsAtRestAsync(params int[] others)
    {
        await SessionsClosedAsync();
        return await ProcStats.SocketsAtRestAsync([Client.Pid, Server.Pid, .. others]);
    }

    /// <summary>Copies each CMESSAGE the client prints to the server's stdin, and each SMESSAGE the other way.</summary>
    private void StartRelay(IEnumerable<string> alreadyRead)
    {
        var early = alreadyRead.ToList();
        _relay = Task.Run(async () =>
        {
            foreach (var l in early) await Forward(l);
            var fromServer = Pump(Server);
            var fromClient = Pump(Client);
            await Task.WhenAll(fromServer, fromClient);
        });

        async Task Pump(PtProcess p)
        {
            while (!_cts.IsCancellationRequested)
            {
                string line;
                try { line = await p.ReadLineAsync(TimeSpan.FromHours(1)); }
                catch (Exception) { return; }
                await Forward(line);
            }
        }

        async Task Forward(string line)
        {
            try
            {
                if (line.StartsWith("CMESSAGE ", StringComparison.Ordinal)) await Server.WriteLineAsync(line);
                else if (line.StartsWith("SMESSAGE ", StringComparison.Ordinal)) await Client.WriteLineAsync(line);
            }
            catch (IOException) { }
            catch (ObjectDisposedException) { }
            catch (InvalidOperationException) { }
        }
    }

    /// <summary>Closes both stdins and returns the exit codes (server, client).</summary>
    public async Task<(int Server, int Client)> StopAsync()
    {
        _cts.Cancel();
        Client.CloseStdin();
        Server.CloseStdin();
        int c = await Client.WaitForExitAsync();
        int s = await Server.WaitForExitAsync();
        return (s, c);
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        await Client.DisposeAsync();
        await Server.DisposeAsync();
        if (_relay is not null) await _relay.WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { });
    }
}
