using System.Buffers.Binary;

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

        var seen = new HashSet<int>();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var receiving = Task.Run(async () =>
        {
            while (seen.Count < Count)
            {
                var r = await udp.ReceiveAsync(stop.Token);
                Assert.Equal(echo.EndPoint, r.RemoteEndPoint);
                lock (seen) seen.Add(BinaryPrimitives.ReadInt32BigEndian(r.Buffer));
            }
        });
        // UDP may lose datagrams: send each once, then resend those still missing until all came back.
        byte[] datagram = new byte[200];
        for (int round = 0; round < 20 && !receiving.IsCompleted; round++)
        {
            for (int i = 0; i < Count; i++)
            {
                lock (seen) if (seen.Contains(i)) continue;
                BinaryPrimitives.WriteInt32BigEndian(datagram, i);
                await udp.SendAsync(datagram, echo.EndPoint);
                if (i % 100 == 99) await Task.Yield();
            }
            await Task.WhenAny(receiving, Task.Delay(500));
        }
        await receiving;
        Assert.Equal(Count, seen.Count);
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
