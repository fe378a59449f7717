namespace PtHost.Client.Tests;

/// <summary>UDP through a transport: the package's RFC 5766 client on pthost's TURN front end (spec/adapters.md §2.8).</summary>
public sealed class UdpTests
{
    private const int Count = 1000;

    [Fact]
    public async Task OneThousandDatagramsEchoOverTurn()
    {
        await using var echo = new UdpEcho();
        await using var server = await Support.FreePlainServerAsync();
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        using var udp = await client.CreateUdpClientAsync("plain");
        Assert.NotNull(udp.RelayedEndPoint);

        int echoed = await Support.EchoDatagramsAsync(Count, echo.EndPoint, async d => await udp.SendAsync(d, echo.EndPoint), ct => udp.ReceiveAsync(ct));

        Assert.Equal(Count, echoed);
        Assert.True(echo.Received >= Count);
    }

    [Fact]
    public async Task APeerTheServerRefusesIsTurnError403()
    {
        await using var echo = new UdpEcho();
        await using var server = await PtHostServer.ProxyAsync("plain", null, ["127.0.0.2"], options: Support.Options());
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        using var udp = await client.CreateUdpClientAsync("plain");

        var e = await Assert.ThrowsAsync<TurnException>(async () => await udp.SendAsync(new byte[] { 1 }, echo.EndPoint));

        Assert.Equal(403, e.Code);
        Assert.Equal(0, echo.Received);
    }
}
