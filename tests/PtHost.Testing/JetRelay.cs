using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Authentication;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Transports.Jet;

namespace PtHost.Testing;

/// <summary>A real <c>pthost relay jet</c> process, its REST API, and its listeners from the LISTEN line.</summary>
public sealed class JetRelayProcess : IAsyncDisposable
{
    private readonly HttpClient _http;

    private JetRelayProcess(PtProcess process, string line, string? apiKey)
    {
        Process = process;
        var fields = line.Split(' ');
        Http = IPEndPoint.Parse(fields[2]);
        foreach (var f in fields.Skip(3))
        {
            var (k, v) = (f[..f.IndexOf('=')], IPEndPoint.Parse(f[(f.IndexOf('=') + 1)..]));
            switch (k)
            {
                case "tcp": Tcp = v; break;
                case "tls": Tls = v; break;
                case "wss": Wss = v; break;
            }
        }
        _http = new HttpClient(new SocketsHttpHandler { SslOptions = { RemoteCertificateValidationCallback = (_, _, _, _) => true } })
        {
            BaseAddress = new Uri($"http://{Http}"),
            Timeout = TimeSpan.FromSeconds(20),
        };
        if (apiKey is not null) _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
    }

    public PtProcess Process { get; }
    public IPEndPoint Http { get; }
    public IPEndPoint? Tcp { get; }
    public IPEndPoint? Tls { get; }
    public IPEndPoint? Wss { get; }
    public HttpClient Rest => _http;

    /// <summary>Starts the relay on loopback; <paramref name="config"/> (JSON) goes to a --config file.</summary>
    public static async Task<JetRelayProcess> StartAsync(JObject? config = null, string? apiKey = null, string listen = "127.0.0.1:0", string loglevel = "debug",
        bool unsafeLogging = false)
    {
        List<string> args = ["relay", "jet", "--listen", listen, "--loglevel", loglevel];
        if (unsafeLogging) args.Add("--unsafe-logging");
        if (config is not null)
        {
            string file = Path.Combine(Directory.CreateTempSubdirectory("pthost-jet-").FullName, "relay.json");
            await File.WriteAllTextAsync(file, config.ToString());
            args.AddRange(["--config", file]);
        }
        var process = PtProcess.StartPthost([.. args]);
        try
        {
            string line = await process.ReadLineAsync();
            Assert.StartsWith("LISTEN jet ", line, StringComparison.Ordinal);
            return new JetRelayProcess(process, line, apiKey);
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    /// <summary>The SHA-256 pin (64 hex digits) of the certificate on the tls (else wss) listener; null without either.</summary>
    public async Task<string?> CertificatePinAsync()
    {
        if ((Tls ?? Wss) is not { } ep) return null;
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(ep);
        await using var ssl = new SslStream(tcp.GetStream(), false, (_, _, _, _) => true);
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = ep.Address.ToString() });
        return PtHost.Net.Tls.PinnedTls.FormatPin(PtHost.Net.Tls.PinnedTls.Pin(ssl.RemoteCertificate!));
    }

    /// <summary>POST /jet/association/{new id}, then POST /jet/gather/{id}: the id and candidates by scheme.</summary>
    public async Task<(Guid Aid, Dictionary<string, (Guid Id, Uri Url)> Candidates)> CreateAndGatherAsync()
    {
        var aid = Guid.NewGuid();
        (await _http.PostAsync($"/jet/association/{aid}", null)).EnsureSuccessStatusCode();
        var gathered = JObject.Parse(await (await _http.PostAsync($"/jet/gather/{aid}", null)).EnsureSuccessStatusCode().Content.ReadAsStringAsync());
        var candidates = new Dictionary<string, (Guid, Uri)>();
        foreach (var c in (JArray)gathered["candidates"]!)
        {
            var url = new Uri((string)c["url"]!);
            candidates[url.Scheme] = (Guid.Parse((string)c["id"]!), url);
        }
        return (aid, candidates);
    }

    /// <summary>Waits until GET /jet/association/{aid} shows candidate <paramref name="cid"/> in <paramref name="state"/> (spec/jet.md §6).</summary>
    public Task WaitForCandidateStateAsync(Guid aid, Guid cid, string state) =>
        Eventually.TrueAsync(async () =>
        {
            var r = await _http.GetAsync($"/jet/association/{aid}");
            if (!r.IsSuccessStatusCode) return false;
            var body = JObject.Parse(await r.Content.ReadAsStringAsync());
            return ((JArray)body["candidates"]!).Any(c => (string?)c["id"] == cid.ToString("D") && (string?)c["state"] == state);
        }, $"candidate {cid} to become {state}");

    public ValueTask DisposeAsync()
    {
        _http.Dispose();
        return Process.DisposeAsync();
    }
}

/// <summary>A raw binary-protocol peer (spec/jet.md §2–4) over TCP or TLS.</summary>
public sealed class JetPeer : IAsyncDisposable
{
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    private JetPeer(Socket socket, Stream stream)
    {
        Socket = socket;
        Stream = stream;
    }

    public Socket Socket { get; }
    public Stream Stream { get; }

    public static async Task<JetPeer> ConnectAsync(IPEndPoint relay, bool tls = false)
    {
        var socket = new Socket(relay.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(relay);
        Stream stream = new NetworkStream(socket, ownsSocket: true);
        if (tls)
        {
            var ssl = new SslStream(stream, false, (_, _, _, _) => true);
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "relay", EnabledSslProtocols = SslProtocols.Tls13 });
            stream = ssl;
        }
        return new JetPeer(socket, stream);
    }

    public Task SendAsync(params byte[] bytes) => Stream.WriteAsync(bytes).AsTask();

    public Task SendRequestAsync(string text, params byte[] after) => SendAsync([.. JetWire.BuildPacket(text), .. after]);

    /// <summary>Sends a v2 accept (with <paramref name="after"/> in the same write) and requires the relay's 200 with <c>Jet-Version: 2</c> (spec/jet.md §4).</summary>
    public async Task<JetResponse> AcceptAsync(Guid aid, Guid cid, string host, params byte[] after)
    {
        await SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, cid, host), after);
        var response = await ReadResponseAsync();
        Assert.Equal(200, response.Status);
        Assert.Equal("2", response.Header("Jet-Version"));
        return response;
    }

    /// <summary>Reads exactly one JET packet and parses the response in it.</summary>
    public async Task<JetResponse> ReadResponseAsync()
    {
        using var cts = new CancellationTokenSource(Wait);
        byte[] header = new byte[8];
        await Stream.ReadExactlyAsync(header, cts.Token);
        Assert.Equal(JetPacketError.None, JetWire.ParseHeader(header, out int size, out byte mask));
        byte[] payload = new byte[size - 8];
        await Stream.ReadExactlyAsync(payload, cts.Token);
        JetWire.ApplyMask(payload, mask);
        Assert.True(JetWire.TryParseResponse(payload, out var response, out string? problem), problem);
        return response!;
    }

    public async Task<byte[]> ReadExactlyAsync(int n)
    {
        using var cts = new CancellationTokenSource(Wait);
        byte[] b = new byte[n];
        await Stream.ReadExactlyAsync(b, cts.Token);
        return b;
    }

    /// <summary>True when the relay closed the connection (end of stream or reset) within the wait.</summary>
    public async Task<bool> IsClosedAsync()
    {
        using var cts = new CancellationTokenSource(Wait);
        try { return await Stream.ReadAsync(new byte[1], cts.Token) == 0; }
        catch (IOException) { return true; }
    }

    public void ShutdownSend()
    {
        if (Stream is SslStream ssl) ssl.ShutdownAsync().GetAwaiter().GetResult();
        Socket.Shutdown(SocketShutdown.Send);
    }

    public ValueTask DisposeAsync() => Stream.DisposeAsync();

    public static string Host(IPEndPoint ep) => ep.ToString();
}

public static class JetWebSockets
{
    public static async Task<ClientWebSocket> ConnectAsync(Uri candidate, JetMethod method, Guid aid, Guid cid)
    {
        var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        ws.Options.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        using var cts = new CancellationTokenSource(JetPeer.Wait);
        await ws.ConnectAsync(new Uri(candidate, $"/jet/{JetWire.MethodName(method)}/{aid}/{cid}"), cts.Token);
        return ws;
    }

    /// <summary>The HTTP status of a refused WebSocket handshake.</summary>
    public static async Task<int> RefusedStatusAsync(Uri candidate, JetMethod method, Guid aid, Guid cid)
    {
        using var ws = new ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        ws.Options.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        using var cts = new CancellationTokenSource(JetPeer.Wait);
        await Assert.ThrowsAsync<WebSocketException>(() => ws.ConnectAsync(new Uri(candidate, $"/jet/{JetWire.MethodName(method)}/{aid}/{cid}"), cts.Token));
        return (int)ws.HttpStatusCode;
    }

    public static async Task SendAsync(WebSocket ws, byte[] data)
    {
        using var cts = new CancellationTokenSource(JetPeer.Wait);
        await ws.SendAsync(data, WebSocketMessageType.Binary, true, cts.Token);
    }

    /// <summary>Receives until <paramref name="n"/> bytes have arrived (messages may be split or joined).</summary>
    public static async Task<byte[]> ReceiveAsync(WebSocket ws, int n)
    {
        using var cts = new CancellationTokenSource(JetPeer.Wait);
        var result = new byte[n];
        int got = 0;
        while (got < n)
        {
            var r = await ws.ReceiveAsync(result.AsMemory(got), cts.Token);
            Assert.NotEqual(WebSocketMessageType.Close, r.MessageType);
            got += r.Count;
        }
        return result;
    }

    public static string Text(byte[] b) => Encoding.ASCII.GetString(b);
}

/// <summary>A jet server and client pthost configured from <c>pthost generate-config jet</c>, the server pointed at a relay process (spec/jet.md §7).</summary>
public static class JetChain
{
    public static Task<JObject> GenerateAsync() => PtChain.GenerateConfigAsync("jet");

    /// <summary>Generated client and server options for <paramref name="relay"/>: its address, its pinned certificate, 10 s signal timeouts.</summary>
    public static async Task<(JObject Client, JObject Server)> OptionsAsync(JetRelayProcess relay)
    {
        var generated = await GenerateAsync();
        var client = (JObject)generated["client"]!;
        var server = (JObject)generated["server"]!;
        server["relay"] = $"http://{relay.Http}";
        // The relay's self-signed certificate, pinned for its host on both sides (spec/jet.md §7.4): tls and wss candidates are checked.
        if (await relay.CertificatePinAsync() is { } pin)
        {
            server["relayPins"] = new JObject { [relay.Http.Address.ToString()] = pin };
            client["relayPins"] = new JObject { [relay.Http.Address.ToString()] = pin };
        }
        client["signalTimeout"] = 10;
        server["signalTimeout"] = 10;
        return (client, server);
    }

    public static async Task<PtChain> StartAsync(JetRelayProcess relay, Action<JObject>? editClient = null, Action<JObject>? editServer = null,
        IDictionary<string, string>? clientEnvironment = null)
    {
        var (client, server) = await OptionsAsync(relay);
        editClient?.Invoke(client);
        editServer?.Invoke(server);
        var serverConfig = PtChain.FreeServerOf("jet", server);
        serverConfig["loglevel"] = "debug";
        var clientConfig = PtChain.ClientOf("jet", client);
        clientConfig["loglevel"] = "debug";
        return await PtChain.StartAsync(serverConfig, _ => clientConfig, clientEnvironment: clientEnvironment);
    }
}
