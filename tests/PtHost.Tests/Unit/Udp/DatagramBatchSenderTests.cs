using System.Net;
using System.Net.Sockets;
using PtHost.Net.Udp;

namespace PtHost.Tests.Unit.Udp;

/// <summary>The batched UDP sender: runs of one size to one address go as one UDP GSO message; every datagram arrives whole, in order.</summary>
public class DatagramBatchSenderTests
{
    [Fact]
    public async Task Runs_of_equal_datagrams_arrive_as_the_datagrams_they_were()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveBufferSize = 1 << 20 };
        using var b = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveBufferSize = 1 << 20 };
        a.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        b.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        using var sender = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp) { DualMode = true };
        sender.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
        var toA = new IPEndPoint(IPAddress.Loopback.MapToIPv6(), ((IPEndPoint)a.LocalEndPoint!).Port).Serialize();
        var toB = new IPEndPoint(IPAddress.Loopback.MapToIPv6(), ((IPEndPoint)b.LocalEndPoint!).Port).Serialize();

        // To a: 20 of 1,200 bytes, one of 700 (ends the run), 5 of 1,200; to b in between: 3 of 1,200.
        var plan = new List<(Socket To, int Length)>();
        for (int i = 0; i < 20; i++) plan.Add((a, 1200));
        plan.Add((a, 700));
        for (int i = 0; i < 3; i++) plan.Add((b, 1200));
        for (int i = 0; i < 5; i++) plan.Add((a, 1200));
        byte[] data = new byte[plan.Sum(p => p.Length)];
        var batch = new DatagramBatchSender();
        int offset = 0;
        for (int i = 0; i < plan.Count; i++)
        {
            data.AsSpan(offset, plan[i].Length).Fill((byte)i);
            batch.Add(sender, data, offset, plan[i].Length, plan[i].To == a ? toA : toB);
            offset += plan[i].Length;
        }
        await batch.FlushAsync(cts.Token);
        Assert.Equal(plan.Count, batch.Sent);
        Assert.Equal(3, batch.SegmentedMessages); // a: 21 (the 700 ends it), b: 3, a: 5
        Assert.Equal(0, batch.Yields); // a sender to peers never yields

        byte[] got = new byte[65536];
        foreach (var socket in new[] { a, b })
        {
            foreach (var (i, length) in plan.Select((p, i) => (i, p)).Where(x => x.p.To == socket).Select(x => (x.i, x.p.Length)))
            {
                int n = await socket.ReceiveAsync(got, SocketFlags.None, cts.Token);
                Assert.Equal(length, n);
                Assert.All(got[..n], x => Assert.Equal((byte)i, x));
            }
            Assert.Equal(0, socket.Available);
        }
    }

    [Theory]
    [InlineData(1, 0)]
    [InlineData(DatagramBatchSender.YieldAfter - 1, 0)]
    [InlineData(DatagramBatchSender.YieldAfter, 1)]
    [InlineData(DatagramBatchSender.Batch, 1)]
    public async Task A_sender_to_the_application_yields_the_CPU_after_a_burst_only(int datagrams, int yields)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        using var receiver = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveBufferSize = 1 << 20 };
        receiver.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        using var sender = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        sender.Connect(receiver.LocalEndPoint!);
        byte[] data = new byte[datagrams * 100];
        var batch = new DatagramBatchSender(yieldAfterBursts: true);
        for (int i = 0; i < datagrams; i++) batch.Add(sender, data, i * 100, 100, null);
        await batch.FlushAsync(cts.Token);
        Assert.Equal(datagrams, batch.Sent);
        Assert.Equal(yields, batch.Yields);
        byte[] got = new byte[1000];
        for (int i = 0; i < datagrams; i++) Assert.Equal(100, await receiver.ReceiveAsync(got, SocketFlags.None, cts.Token));
    }
}
