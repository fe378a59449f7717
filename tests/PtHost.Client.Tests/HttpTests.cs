using System.Text.Json.Nodes;

namespace PtHost.Client.Tests;

/// <summary>HttpClient through the client package (spec/adapters.md §5.3): over plain, and over zephyr with a real relay and signals.</summary>
public sealed class HttpTests
{
    [Fact]
    public async Task HttpClientOverPlainFetchesOneMebibyte()
    {
        await using var web = new HttpFileServer(Support.Body);
        await using var server = await Support.FreePlainServerAsync();
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        Assert.Equal(["plain"], client.Transports);
        using var http = new HttpClient(new SocketsHttpHandler().UsePluggableTransport(client, "plain"));

        var got = await Support.FetchAsync(http, $"http://127.0.0.1:{web.Port}/file");

        Assert.Equal((200, Support.BodySha, Support.Body.Length), got);
        // Stats through a STATUS request (§2.7): the server has sent the body on.
        var stats = await server.GetStatsAsync();
        Assert.True(stats["plain"].Opened >= 1, $"server opened {stats["plain"].Opened}");
        Assert.True(stats["plain"].BytesOut >= Support.Body.Length || stats["plain"].BytesIn >= Support.Body.Length,
            $"server counted {stats["plain"]}");
        var clientStats = await client.GetStatsAsync();
        Assert.True(clientStats["plain"].Opened >= 1);
    }

    /// <summary>`generate-config zephyr`'s client and server options, both pointed at <paramref name="relay"/>.</summary>
    private static async Task<(JsonObject Client, JsonObject Server)> ZephyrOptionsAsync(ZephyrRelayProcess relay)
    {
        var generated = await PtHostServer.GenerateConfigAsync("zephyr", Support.Options());
        var client = (JsonObject)generated["client"]!.DeepClone();
        var server = (JsonObject)generated["server"]!.DeepClone();
        client["relay"] = relay.EndPoint.ToString();
        server["relay"] = relay.EndPoint.ToString();
        return (client, server);
    }

    [Fact]
    public async Task HttpClientOverZephyrWithRelayAndLinkedSignals()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var (clientOptions, serverOptions) = await ZephyrOptionsAsync(relay);
        await using var web = new HttpFileServer(Support.Body);
        await using var server = await PtHostServer.ProxyAsync("zephyr", serverOptions, ["127.0.0.1"], options: Support.Options());
        Assert.Matches("^[0-9a-f]{64}$", server.Args["pin"]);
        await using var client = await PtHostClient.StartAsync(new JsonObject
        {
            ["transports"] = new JsonArray("zephyr"),
            ["options"] = new JsonObject { ["zephyr"] = clientOptions },
        }, Support.Options());

        // Carried line by line, as an application would: the offer one way, the answer the other.
        int offers = 0, answers = 0;
        using var stop = new CancellationTokenSource();
        var toServer = Task.Run(async () =>
        {
            await foreach (var line in client.ReadSignalsAsync(stop.Token)) { Interlocked.Increment(ref offers); await server.SendSignalAsync(line); }
        });
        var toClient = Task.Run(async () =>
        {
            await foreach (var line in server.ReadSignalsAsync(stop.Token)) { Interlocked.Increment(ref answers); await client.SendSignalAsync(line); }
        });
        using var http = new HttpClient(new SocketsHttpHandler().UsePluggableTransport(client, "zephyr"));

        var got = await Support.FetchAsync(http, $"http://127.0.0.1:{web.Port}/file");

        Assert.Equal((200, Support.BodySha, Support.Body.Length), got);
        Assert.True(offers >= 1 && answers >= 1, $"signals went both ways ({offers} offers, {answers} answers)");
        await stop.CancelAsync();
        await Task.WhenAll(toServer, toClient).ContinueWith(_ => { });
    }

    [Fact]
    public async Task LinkedSignalsCarryZephyrBetweenTwoInstances()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var (clientOptions, serverOptions) = await ZephyrOptionsAsync(relay);
        await using var echo = new EchoServer();
        await using var server = await PtHostServer.ListenAsync("zephyr", serverOptions, $"127.0.0.1:{echo.Port}", options: Support.Options());
        await using var client = await PtHostClient.StartAsync(new JsonObject
        {
            ["transports"] = new JsonArray("zephyr"),
            ["options"] = new JsonObject { ["zephyr"] = clientOptions },
        }, Support.Options());
        using var stop = new CancellationTokenSource();
        var link = PtHostInstance.LinkSignalsAsync(client, server, stop.Token);

        await using var stream = await client.ConnectAsync("zephyr", null, "127.0.0.1", 9);
        byte[] sent = System.Text.Encoding.ASCII.GetBytes("bound zephyr server, linked signals");
        await stream.WriteAsync(sent);
        byte[] back = new byte[sent.Length];
        await stream.ReadExactlyAsync(back);
        Assert.Equal(sent, back);
        await stop.CancelAsync();
        await link;
    }
}
