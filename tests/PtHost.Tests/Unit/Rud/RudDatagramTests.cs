using System.Buffers.Binary;
using System.Security.Cryptography;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>Datagram streams (spec/rud.md §8.2) and transactional streams.</summary>
public class RudDatagramTests
{
    private static byte[] Datagram(int i)
    {
        var d = new byte[100 + i % 1100];
        BinaryPrimitives.WriteInt32BigEndian(d, i);
        new Random(i).NextBytes(d.AsSpan(4, d.Length - 36));
        SHA256.HashData(d.AsSpan(0, d.Length - 32), d.AsSpan(d.Length - 32));
        return d;
    }

    /// <summary>Sends when the channel's send queue has room (a full queue refuses the datagram).</summary>
    private static Task SendAsync(RudDatagramStream ch, byte[] datagram) =>
        Eventually.TrueAsync(() => ch.TrySend(datagram), "room in the datagram send queue");

    /// <summary>Receives until <paramref name="expected"/> datagrams have come or none has for <paramref name="quiet"/> (the rest were lost).</summary>
    private static async Task<HashSet<int>> ReceiveAsync(RudDatagramStream ch, int expected, TimeSpan quiet)
    {
        var got = new HashSet<int>();
        var buffer = new byte[2048];
        while (got.Count < expected)
        {
            using var cts = new CancellationTokenSource(quiet);
            int n;
            try { n = await ch.ReceiveAsync(buffer, cts.Token); }
            catch (OperationCanceledException) { break; }
            var d = buffer.AsSpan(0, n);
            Assert.Equal(SHA256.HashData(d[..^32]), d[^32..].ToArray());
            int index = BinaryPrimitives.ReadInt32BigEndian(d);
            // Datagram 0 is sent repeatedly by the lossy test until the channel shows up.
            Assert.True(got.Add(index) || index == 0, $"datagram {index} was delivered twice");
        }
        return got;
    }

    [Fact]
    public async Task Datagrams_arrive_intact_once_each_over_a_clean_link()
    {
        await using var pair = RudEndpointTests.Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        var ch = c.OpenDatagramStream();
        Assert.False(ch.TrySend(new byte[RudDatagramStream.MaxDatagramSize + 1]));
        Assert.True(ch.TrySend(Datagram(0)));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var peer = await s.AcceptDatagramStreamAsync(cts.Token);
        var receiving = ReceiveAsync(peer, 200, TimeSpan.FromSeconds(10));
        for (int i = 1; i < 200; i++)
        {
            await SendAsync(ch, Datagram(i));
        }
        var got = await receiving;
        Assert.Equal(200, got.Count);
        // And back the other way on the same stream.
        Assert.True(peer.TrySend(Datagram(7)));
        Assert.Contains(7, await ReceiveAsync(ch, 1, TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Over_a_lossy_link_lost_datagrams_stay_lost_and_the_rest_arrive_without_duplicates()
    {
        await using var pair = RudEndpointTests.Pair.Start(relaySeed: 31);
        pair.Relay!.Loss = 0.05;
        pair.Relay.Duplicate = 0.05;
        pair.Relay.Delay = TimeSpan.FromMilliseconds(20);
        pair.Relay.Jitter = TimeSpan.FromMilliseconds(5);
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        var ch = c.OpenDatagramStream();
        await SendAsync(ch, Datagram(0));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        RudDatagramStream peer;
        // The first datagram may be the one lost: send it until the channel shows up.
        var accept = s.AcceptDatagramStreamAsync(cts.Token).AsTask();
        while (!await Eventually.CompletesWithinAsync(accept, TimeSpan.FromMilliseconds(200))) ch.TrySend(Datagram(0)); // resent every 200 ms
        peer = await accept;
        var receiving = ReceiveAsync(peer, 1000, TimeSpan.FromSeconds(3));
        for (int i = 1; i < 1000; i++)
        {
            await SendAsync(ch, Datagram(i));
            // The sender's pace, not a wait for anything: about 4,000 datagrams/s stays well inside the
            // receiver's queue, so what goes missing is the link's loss and not an overflow.
            if (i % 20 == 0) await Task.Delay(5);
        }
        var got = await receiving;
        Assert.InRange(got.Count, 850, 999);   // about 5 % lost, none resent
        Assert.True(pair.Relay.Dropped > 0);
    }

    [Fact]
    public async Task A_transactional_stream_delivers_its_message_only_when_all_of_it_has_arrived()
    {
        await using var pair = RudEndpointTests.Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var request = RandomNumberGenerator.GetBytes(300_000);
        var st = c.OpenStream(StreamKind.Transactional);
        Assert.Equal(StreamKind.Transactional, st.Kind);
        await st.WriteAsync(request.AsMemory(0, 1000), cts.Token);
        var ss = await s.AcceptStreamAsync(cts.Token);
        Assert.Equal(StreamKind.Transactional, ss.Kind);
        // Nothing is readable before the final flag.
        var early = ss.ReadAsync(new byte[10], cts.Token).AsTask();
        // Nothing happens: the first 1,000 bytes cross loopback in well under 200 ms, so a read that completes
        // within them would have delivered part of an unfinished message.
        Assert.False(await Eventually.CompletesWithinAsync(early, TimeSpan.FromMilliseconds(200)));
        await st.WriteAsync(request.AsMemory(1000), cts.Token);
        st.ShutdownWrite();
        int first = await early;
        Assert.Equal(10, first);
        var rest = await RudEndpointTests.ReadAllAsync(ss, cts.Token);
        Assert.Equal(request, request.AsSpan(0, 10).ToArray().Concat(rest).ToArray());
        await ss.WriteAsync("ok"u8.ToArray(), cts.Token);
        ss.ShutdownWrite();
        Assert.Equal("ok"u8.ToArray(), await RudEndpointTests.ReadAllAsync(st, cts.Token));
    }
}

/// <summary>RUD over IPv6 loopback (spec/rud.md §4.4: tokens bind 16-byte addresses).</summary>
public class RudIPv6Tests
{
    [Fact]
    public async Task A_deferred_exchange_and_a_stream_work_over_IPv6()
    {
        var key = X25519.GeneratePrivateKey();
        await using var s = RudEndpoint.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0), new RudEndpointOptions { StaticPrivateKey = key, Challenge = ChallengePolicy.Always });
        await using var c = RudEndpoint.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0), new RudEndpointOptions());
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var cc = await c.ConnectAsync(s.LocalEndPoint, s.StaticPublicKey, cts.Token);
        var sc = await s.AcceptConnectionAsync(cts.Token);
        Assert.Equal(ExchangeMode.Deferred, cc.Mode);
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetworkV6, sc.RemoteEndPoint.AddressFamily);
        await RudEndpointTests.TransferBothWaysAsync(cc, sc, RandomNumberGenerator.GetBytes(200_000), RandomNumberGenerator.GetBytes(200_000), TimeSpan.FromSeconds(30));
    }
}
