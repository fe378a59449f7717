using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Transports.Asport;

namespace PtHost.Tests.Unit;

/// <summary>The asport transport's UDP mapping (spec/asport.md §6.2): frames, client options, and the client session against a scripted UDP server.</summary>
public sealed class AsportUdpTests
{
    [Fact]
    public void OPEN_is_22_bytes_for_the_unspecified_IPv6_address_and_CLOSE_is_the_shortest_frame()
    {
        Assert.Equal(Convert.FromHexString("00140504" + new string('0', 32) + "0000"), DatagramFrame.OpenFrame);
        Assert.Equal(Convert.FromHexString("00140504" + new string('0', 32) + "0001"), DatagramFrame.KeepaliveFrame);
        Assert.Equal(Convert.FromHexString("000806010000000000 00".Replace(" ", "")), DatagramFrame.CloseFrame);
        Assert.Equal(65485, AsportUdpFrames.MaxPayload);
    }

    [Fact]
    public void A_datagram_is_exactly_one_frame()
    {
        Assert.True(DatagramFrame.TryReadDatagram(DatagramFrame.CloseFrame, out var type, out _, out _));
        Assert.Equal(DatagramFrameType.Close, type);
        Assert.False(DatagramFrame.TryReadDatagram([.. DatagramFrame.CloseFrame, 0], out _, out _, out _)); // trailing byte
        Assert.False(DatagramFrame.TryReadDatagram(DatagramFrame.OpenFrame.AsSpan(0, 21), out _, out _, out _)); // short
        Assert.False(DatagramFrame.TryReadDatagram([], out _, out _, out _));
        Assert.False(DatagramFrame.TryReadDatagram([0, 8, 6, 2, 0, 0, 0, 0, 0, 0], out _, out _, out _)); // ATYP 2
    }

    [Theory]
    [InlineData("{\"udp\": 1}", "udp")]
    [InlineData("{\"serverAddress\": 5}", "serverAddress")]
    [InlineData("{\"what\": true}", "what")]
    public void Bad_client_options_are_refused_naming_the_key(string json, string key)
    {
        var e = Assert.Throws<OptionsException>(() => AsportClientOptions.Parse(JToken.Parse(json)));
        Assert.Equal("options.asport." + key, e.Path);
    }

    [Fact]
    public void Client_options_udp_and_a_null_serverAddress()
    {
        Assert.Equal(new AsportClientOptions(null, true), AsportClientOptions.Parse(JToken.Parse("{\"serverAddress\": null, \"udp\": true}")));
        var o = AsportClientOptions.Parse(JToken.Parse("{\"serverAddress\": \"192.0.2.1:4000\"}"));
        Assert.False(o.Udp);
        Assert.Equal("192.0.2.1:4000", o.ServerAddress!.ToString());
    }

    /// <summary>A scripted "public port": answers each datagram with what the test says.</summary>
    private sealed class ScriptedServer : IDisposable
    {
        public readonly Socket Socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        public ScriptedServer() => Socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        public IPEndPoint EndPoint => (IPEndPoint)Socket.LocalEndPoint!;

        public async Task<(byte[] Frame, EndPoint From)> ReceiveAsync()
        {
            var buffer = new byte[70000];
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            var r = await Socket.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.Any, 0), cts.Token);
            return (buffer[..r.ReceivedBytes], r.RemoteEndPoint);
        }

        public void Dispose() => Socket.Dispose();
    }

    private static byte[] Frame(DatagramFrameType type, PeerAddress peer, byte[] payload)
    {
        var f = new byte[DatagramFrame.HeaderLength(peer) + payload.Length];
        DatagramFrame.Write(f, type, peer, payload);
        return f;
    }

    [Fact]
    public async Task OPEN_is_repeated_until_RELAYED_then_DATA_and_CHECK_flow_oversized_DATA_is_dropped_and_dispose_sends_CLOSE()
    {
        using var server = new ScriptedServer();
        var open = AsportAssociation.OpenAsync(server.EndPoint, null, CancellationToken.None, NullLogger.Instance, CancellationToken.None);
        var (first, from) = await server.ReceiveAsync();
        Assert.Equal(DatagramFrame.OpenFrame, first);
        var (second, _) = await server.ReceiveAsync(); // no answer yet: repeated
        Assert.Equal(DatagramFrame.OpenFrame, second);
        var relayed = PeerAddress.From(new IPEndPoint(IPAddress.IPv6Any, 40000));
        await server.Socket.SendToAsync(Frame(DatagramFrameType.Relayed, relayed, []), from);
        await using var session = await open;
        Assert.Equal(relayed, session.RelayedAddress);

        var peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.7"), 53));
        await session.SendAsync(peer, new byte[AsportUdpFrames.MaxPayload + 1], CancellationToken.None); // too large: dropped, not thrown
        await session.SendAsync(peer, new byte[] { 1, 2, 3 }, CancellationToken.None);
        byte[] data;
        do (data, _) = await server.ReceiveAsync(); while (data.AsSpan().SequenceEqual(DatagramFrame.OpenFrame)); // late repeats
        Assert.Equal(Frame(DatagramFrameType.Data, peer, [1, 2, 3]), data);

        var check = session.CheckPeerAsync(peer, CancellationToken.None).AsTask();
        var receive = session.ReceiveAsync(new byte[100], CancellationToken.None).AsTask();
        Assert.Equal(Frame(DatagramFrameType.Check, peer, []), (await server.ReceiveAsync()).Frame);
        await server.Socket.SendToAsync(new byte[] { 1, 2, 3 }, from); // junk: dropped
        await server.Socket.SendToAsync(Frame(DatagramFrameType.Refused, peer, []), from);
        Assert.False(await check.WaitAsync(TimeSpan.FromSeconds(20)));
        await server.Socket.SendToAsync(Frame(DatagramFrameType.Data, peer, [9, 8]), from);
        var (got, length) = await receive.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal((peer, 2), (got, length));

        await session.DisposeAsync();
        byte[] last;
        do (last, _) = await server.ReceiveAsync(); while (last.AsSpan().SequenceEqual(Frame(DatagramFrameType.Check, peer, []))); // late repeats
        Assert.Equal(DatagramFrame.CloseFrame, last);
    }

    [Fact]
    public async Task CLOSE_instead_of_RELAYED_refuses_the_association()
    {
        using var server = new ScriptedServer();
        var open = AsportAssociation.OpenAsync(server.EndPoint, null, CancellationToken.None, NullLogger.Instance, CancellationToken.None);
        var (_, from) = await server.ReceiveAsync();
        await server.Socket.SendToAsync(DatagramFrame.CloseFrame, from);
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => open);
        Assert.Contains("refused", e.Message);
    }

    [Fact]
    public async Task CLOSE_from_the_server_and_a_changed_address_end_an_open_session()
    {
        using var server = new ScriptedServer();
        using var gone = new CancellationTokenSource();
        async Task<(AsportAssociation, EndPoint)> OpenAsync()
        {
            var open = AsportAssociation.OpenAsync(server.EndPoint, null, gone.Token, NullLogger.Instance, CancellationToken.None);
            var (_, from) = await server.ReceiveAsync();
            await server.Socket.SendToAsync(Frame(DatagramFrameType.Relayed, PeerAddress.From(new IPEndPoint(IPAddress.Loopback, 9)), []), from);
            return (await open, from);
        }
        var (a, fromA) = await OpenAsync();
        await using (a)
        {
            var receive = a.ReceiveAsync(new byte[100], CancellationToken.None).AsTask();
            await server.Socket.SendToAsync(DatagramFrame.CloseFrame, fromA);
            Assert.Equal(-1, (await receive.WaitAsync(TimeSpan.FromSeconds(20))).Length);
        }
        var (b, _) = await OpenAsync();
        await using (b)
        {
            var receive = b.ReceiveAsync(new byte[100], CancellationToken.None).AsTask();
            gone.Cancel();
            Assert.Equal(-1, (await receive.WaitAsync(TimeSpan.FromSeconds(20))).Length);
        }
    }
}
