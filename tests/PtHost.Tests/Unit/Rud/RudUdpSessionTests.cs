using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>UDP sessions over datagram streams (spec/rud.md §12.1): the framing, and the client session against a scripted server.</summary>
public class RudUdpSessionTests
{
    private static readonly PeerAddress V4 = PeerAddress.From(IPEndPoint.Parse("192.0.2.1:3478"));
    private static readonly PeerAddress V6 = PeerAddress.From(IPEndPoint.Parse("[2001:db8::1]:65535"));

    [Fact]
    public void Frames_round_trip_for_both_families_up_to_the_largest_payload()
    {
        Assert.Equal(1178, RudUdpFrames.MaxPayload);
        var buffer = new byte[RudUdpFrames.MaxFrame];
        foreach (var peer in new[] { V4, V6 })
        {
            foreach (int size in new[] { 0, 1, 100, RudUdpFrames.MaxPayload })
            {
                var payload = new byte[size];
                Random.Shared.NextBytes(payload);
                int n = RudUdpFrames.TryWrite(buffer, DatagramFrameType.Data, peer, payload);
                Assert.Equal(DatagramFrame.HeaderLength(peer) + size, n);
                Assert.True(n <= RudDatagramStream.MaxDatagramSize);
                Assert.True(DatagramFrame.TryReadDatagram(buffer.AsSpan(0, n), out var type, out var read, out var range));
                Assert.Equal(DatagramFrameType.Data, type);
                Assert.Equal(peer, read);
                Assert.Equal(payload, buffer[range]);
            }
            Assert.Equal(0, RudUdpFrames.TryWrite(buffer, DatagramFrameType.Data, peer, new byte[RudUdpFrames.MaxPayload + 1]));
        }
        // The example of spec/turn.md §5.2 is one datagram here too.
        byte[] example = Convert.FromHexString("000a0001c00002010d966869");
        Assert.True(DatagramFrame.TryReadDatagram(example, out var t, out var p, out var r));
        Assert.Equal((DatagramFrameType.Data, V4, "hi"), (t, p, System.Text.Encoding.ASCII.GetString(example[r])));
        Assert.Equal("0014050400000000000000000000000000000000" + "0000", Convert.ToHexString(DatagramFrame.OpenFrame).ToLowerInvariant());
        Assert.Equal("0014050400000000000000000000000000000000" + "0001", Convert.ToHexString(DatagramFrame.KeepaliveFrame).ToLowerInvariant());
        Assert.Equal("00080601000000000000", Convert.ToHexString(DatagramFrame.CloseFrame).ToLowerInvariant());
    }

    [Theory]
    [InlineData("")]                          // empty
    [InlineData("000a00")]                     // shorter than any header
    [InlineData("000a0002c00002010d966869")]   // ATYP 2
    [InlineData("000a0003c00002010d966869")]   // ATYP 3 (names are not carried)
    [InlineData("00050001c00002010d96")]       // LENGTH too short for its address
    [InlineData("000b0001c00002010d966869")]   // LENGTH beyond the datagram
    [InlineData("00090001c00002010d966869")]   // LENGTH short of the datagram: trailing byte
    [InlineData("000a0001c00002010d966869000a0001c00002010d966869")] // two frames in one datagram
    [InlineData("00080004c0000201")]           // IPv6 without its address
    [InlineData("ffff0001c00002010d96")]       // LENGTH 65535 in a 10-byte datagram
    public void Malformed_datagrams_are_rejected_without_exceptions(string hex)
    {
        Assert.False(DatagramFrame.TryReadDatagram(Convert.FromHexString(hex), out _, out _, out _));
    }

    [Fact]
    public void Random_input_never_throws()
    {
        var random = new Random(1234);
        var buffer = new byte[RudUdpFrames.MaxFrame];
        for (int i = 0; i < 20000; i++)
        {
            int n = random.Next(0, 64);
            random.NextBytes(buffer.AsSpan(0, n));
            if (i % 2 == 0 && n >= 2) { buffer[0] = 0; buffer[1] = (byte)(n - 2); }
            if (DatagramFrame.TryReadDatagram(buffer.AsSpan(0, n), out _, out _, out var range))
                Assert.InRange(range.End.Value, range.Start.Value, n);
        }
    }

    private static (DatagramFrameType Type, PeerAddress Peer, byte[] Payload) Read(byte[] buffer, int n)
    {
        Assert.True(DatagramFrame.TryReadDatagram(buffer.AsSpan(0, n), out var type, out var peer, out var payload));
        return (type, peer, buffer[payload]);
    }

    private static void Send(RudDatagramStream ch, DatagramFrameType type, PeerAddress peer, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[RudUdpFrames.MaxFrame];
        Assert.True(ch.TrySend(frame.AsSpan(0, RudUdpFrames.TryWrite(frame, type, peer, payload))));
    }

    /// <summary>
    /// The client session over a real RUD connection, the server side scripted: OPEN until RELAYED,
    /// CHECK answered, DATA both ways, an oversize payload dropped, junk ignored, CLOSE from the server ends it.
    /// </summary>
    [Fact]
    public async Task Client_session_opens_checks_relays_and_ends_on_close()
    {
        await using var pair = RudEndpointTests.Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var opening = RudAssociation.OpenAsync(c.OpenDatagramStream(), "test", NullLogger.Instance, null, cts.Token);
        var server = await s.AcceptDatagramStreamAsync(cts.Token);
        var buffer = new byte[RudUdpFrames.MaxFrame];
        int n = await server.ReceiveAsync(buffer, cts.Token);
        Assert.Equal(DatagramFrame.OpenFrame, buffer[..n]);
        server.TrySend(new byte[] { 1, 2, 3 }); // junk before RELAYED: ignored
        var relayed = PeerAddress.From(IPEndPoint.Parse("[::]:40000"));
        Send(server, DatagramFrameType.Relayed, relayed, default);
        await using var session = await opening;
        Assert.Equal(relayed, session.RelayedAddress);
        Assert.Equal(1178, session.MaxDatagramSize);

        var check = session.CheckPeerAsync(V4, cts.Token).AsTask();
        var receiving = session.ReceiveAsync(new byte[2048], cts.Token).AsTask(); // the TURN server's receive loop
        while (true)
        {
            n = await server.ReceiveAsync(buffer, cts.Token);
            var f = Read(buffer, n);
            if (f.Type == DatagramFrameType.Check) { Assert.Equal(V4, f.Peer); break; } // OPEN repeats may come first
        }
        Send(server, DatagramFrameType.Refused, V4, default);
        Assert.False(await check);

        await session.SendAsync(V6, new byte[1179], cts.Token);      // too large: dropped
        await session.SendAsync(V6, "hello"u8.ToArray(), cts.Token);
        while (true)
        {
            n = await server.ReceiveAsync(buffer, cts.Token);
            var f = Read(buffer, n);
            if (f.Type == DatagramFrameType.Check || f.Type == DatagramFrameType.Open) continue;
            Assert.Equal((DatagramFrameType.Data, V6, "hello"), (f.Type, f.Peer, System.Text.Encoding.ASCII.GetString(f.Payload)));
            break;
        }
        Send(server, DatagramFrameType.Data, V4, "back"u8);
        var (from, length) = await receiving;
        Assert.Equal((V4, 4), (from, length));

        Send(server, DatagramFrameType.Close, PeerAddress.FromBytes(new byte[4], 0), default);
        Assert.Equal(-1, (await session.ReceiveAsync(new byte[2048], cts.Token)).Length);
    }

    /// <summary>A server that answers OPEN with CLOSE refuses the association: the open fails with a TransportConnectException.</summary>
    [Fact]
    public async Task Close_instead_of_relayed_fails_the_open()
    {
        await using var pair = RudEndpointTests.Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var opening = RudAssociation.OpenAsync(c.OpenDatagramStream(), "test", NullLogger.Instance, null, cts.Token);
        var server = await s.AcceptDatagramStreamAsync(cts.Token);
        Assert.True(server.TrySend(DatagramFrame.CloseFrame));
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => opening);
        Assert.Contains("refused the UDP association", e.Message);
    }

    /// <summary>
    /// A connection carries at most 256 datagram streams over its life (datagram streams are never
    /// closed on the wire, spec/rud.md §12.1): the rud client factory opens UDP session 257 on a second
    /// connection, and closes the first one once nothing is left open on it (not before). The server
    /// side is scripted (RELAYED for every OPEN).
    /// </summary>
    [Fact]
    public async Task Session_257_goes_to_a_new_connection_and_the_used_one_closes_when_idle()
    {
        await using var pair = RudEndpointTests.Pair.Start();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
        var serverConnections = new System.Collections.Concurrent.ConcurrentQueue<RudConnection>();
        var relayed = new byte[RudUdpFrames.MaxFrame];
        int relayedLength = RudUdpFrames.TryWrite(relayed, DatagramFrameType.Relayed, PeerAddress.From(IPEndPoint.Parse("[::]:40000")), default);
        async Task AnswerAsync(RudDatagramStream ch)
        {
            var b = new byte[RudUdpFrames.MaxFrame];
            try
            {
                while (true)
                {
                    int n = await ch.ReceiveAsync(b, cts.Token);
                    if (DatagramFrame.TryReadDatagram(b.AsSpan(0, n), out var t, out _, out _) && t == DatagramFrameType.Open) ch.TrySend(relayed.AsSpan(0, relayedLength));
                }
            }
            catch (Exception e) when (e is OperationCanceledException or System.Threading.Channels.ChannelClosedException) { }
        }
        var serving = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    var conn = await pair.Server.AcceptConnectionAsync(cts.Token);
                    serverConnections.Enqueue(conn);
                    _ = Task.Run(async () =>
                    {
                        try { while (true) _ = AnswerAsync(await conn.AcceptDatagramStreamAsync(cts.Token)); }
                        catch (Exception e) when (e is OperationCanceledException or System.Threading.Channels.ChannelClosedException) { }
                    });
                }
            }
            catch (Exception e) when (e is OperationCanceledException or System.Threading.Channels.ChannelClosedException) { }
        });
        var options = new Newtonsoft.Json.Linq.JObject
        {
            ["serverAddress"] = pair.Server.LocalEndPoint.ToString(),
            ["serverKey"] = Convert.ToBase64String(pair.ServerPublic),
        };
        var context = new TransportEnvironment("rud", options, Path.GetTempPath(), null!, null!, NullLoggerFactory.Instance, new TransportCounters());
        var client = (IDatagramClientFactory)new RudTransport().CreateClientFactory(context);
        ConnectRequest Request(int i) => new(new Destination("0.0.0.0", 0), null, i, SessionKind.Datagram);
        try
        {
            var held = await client.OpenAssociationAsync(Request(0), cts.Token);
            for (int i = 1; i < 256; i++)
            {
                await using var session = await client.OpenAssociationAsync(Request(i), cts.Token);
                Assert.Equal(40000, session.RelayedAddress.Port);
            }
            Assert.Single(serverConnections);
            await using (var second = await client.OpenAssociationAsync(Request(256), cts.Token))
                Assert.Equal(40000, second.RelayedAddress.Port);
            Assert.Equal(2, serverConnections.Count);
            var first = serverConnections.First();
            Assert.False(first.IsClosed); // the held session is still open on it
            await held.DisposeAsync();
            await using (var third = await client.OpenAssociationAsync(Request(257), cts.Token))
                Assert.Equal(40000, third.RelayedAddress.Port);
            Assert.Equal(2, serverConnections.Count); // 257 went to the second connection
            await Eventually.TrueAsync(() => first.IsClosed, "the CLOSE of the used-up connection");
            Assert.False(serverConnections.Last().IsClosed);
        }
        finally
        {
            await ((IAsyncDisposable)client).DisposeAsync();
            cts.Cancel();
            await serving;
        }
    }
}
