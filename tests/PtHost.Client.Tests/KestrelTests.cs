using System.Net;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using PtHost.AspNetCore;
using PtHost.Embedded;

namespace PtHost.Client.Tests;

/// <summary>
/// Kestrel over a transport (spec/adapters.md §5.10): a minimal API served over plain in process, fetched with curl
/// through a pthost client process (curl --socks5-hostname).
/// </summary>
public sealed class KestrelTests
{
    [Fact]
    public async Task MinimalApiOverPlainInProcessServesCurlThroughAPthostClient()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var servers = new List<EmbeddedServer>();
        builder.WebHost.UsePluggableTransport("plain", started: servers.Add);
        await using var app = builder.Build();
        app.MapGet("/hello", () => "hello over plain\n");
        app.MapGet("/big", () => Results.Bytes(Support.Body, "application/octet-stream"));
        await app.StartAsync();
        var server = Assert.Single(servers);

        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        var socks = client.GetSocksEndPoint("plain");

        Assert.Equal("hello over plain\n", await Support.CurlAsync(socks, "http://site.example/hello"));

        string file = Path.GetTempFileName();
        try
        {
            await Support.CurlAsync(socks, "http://site.example/big", "-o", file);
            Assert.Equal(Support.BodySha, Convert.ToHexStringLower(SHA256.HashData(await File.ReadAllBytesAsync(file))));
        }
        finally
        {
            File.Delete(file);
        }
        Assert.True(server.GetStats("plain").SessionsOpened >= 2);
        await app.StopAsync();
    }
}
