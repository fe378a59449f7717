using System.Buffers.Binary;
using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Embedded;
using PtHost.Net;
using PtHost.Net.Signals;
using PtHost.Turn;

namespace PtHost.Client.Tests;

/// <summary>
/// The TURN client's refreshes (spec/adapters.md §2.8 step 5) against pthost's own TURN server code (PtHost.Turn, a
/// listener carrying associations over a real plain server process) run in the test process so that its lifetimes can
/// be seconds: an allocation of 4 s, permissions and channel bindings of 3 s, nonces of 3 s (so refreshes meet 438 too).
/// Without the refreshes the permission would lapse after 3 s and the peer's answers be discarded (spec/turn.md §3.4).
/// </summary>
public sealed class TurnRefreshTests
{
    private const string Realm = "example.org", User = "refresh", Password = "secret";

    [Fact]
    public async Task RefreshesKeepAllocationPermissionAndChannelWhileDatagramsFlow()
    {
        await using var echo = new UdpEcho();
        await using var server = await Support.FreePlainServerAsync();
        string state = Directory.CreateTempSubdirectory("pthost-turn-refresh-").FullName;
        var counters = new TransportCounters();
        var signals = new SignalEnvelopes(server: false, (_, _) => { }, NullLogger.Instance).For("plain");
        var plain = BuiltInTransports.All.Single(t => t.Name == "plain").Create();
        await using var factory = plain.CreateClientFactory(new TransportEnvironment("plain", new JObject { ["serverAddress"] = server.EndPoint.ToString() },
            state, signals, new DirectDialer(), NullLoggerFactory.Instance, counters));
        var limits = new TurnLimits
        {
            DefaultLifetime = TimeSpan.FromSeconds(4),
            MaxLifetime = TimeSpan.FromSeconds(4),
            PermissionLifetime = TimeSpan.FromSeconds(3),
            ChannelLifetime = TimeSpan.FromSeconds(3),
            NonceLifetime = TimeSpan.FromSeconds(3),
        };
        await using var listener = new TurnListener("plain", new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm,
            new Dictionary<string, string> { [User] = Password }, limits), factory, NullLogger.Instance);
        listener.Start();
        // Channels bound again every second, inside their 3 s; the allocation every 2 s (half its granted 4 s).
        using var udp = new TurnUdpClient(listener.LocalEndPoint, User, Password) { ChannelRefreshInterval = TimeSpan.FromSeconds(1) };
        await udp.AllocateAsync(CancellationToken.None);

        // One datagram at a time, each echoed before the next (a lost one is a time-out, not a gap to resend), at most
        // 100 a second, until three refreshes of each kind have succeeded: 6 s and more, past every unrefreshed lifetime.
        byte[] datagram = new byte[64];
        using var pace = new PeriodicTimer(TimeSpan.FromMilliseconds(10));
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        int sent = 0;
        var started = DateTime.UtcNow;
        while (udp.AllocationRefreshes < 3 || udp.ChannelRefreshes < 3)
        {
            BinaryPrimitives.WriteInt32BigEndian(datagram, sent);
            await udp.SendAsync(datagram, echo.EndPoint, limit.Token);
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(limit.Token);
            wait.CancelAfter(TimeSpan.FromSeconds(5));
            AssertEchoed(await ReceiveOrNullAsync(udp, wait.Token), sent, echo.EndPoint,
                $"after {DateTime.UtcNow - started:g}, {udp.AllocationRefreshes} allocation and {udp.ChannelRefreshes} channel refreshes");
            sent++;
            await pace.WaitForNextTickAsync(limit.Token);
        }

        Assert.True(DateTime.UtcNow - started > limits.DefaultLifetime, "the datagrams flowed past the allocation's unrefreshed lifetime");
        Assert.Equal(sent, echo.Received); // every datagram reached the peer once, and came back (above)
        Assert.Equal(1, listener.Server.AllocationCount);
    }

    /// <summary>
    /// The allocation is lost when the server process behind it exits (its association ends, spec/turn.md §3.4): the next
    /// Refresh is answered 437, and the client says so (spec/adapters.md §5.5) instead of waiting in ReceiveAsync for
    /// datagrams that can never come, as it did when its refresh loop ended silently.
    /// </summary>
    [Fact]
    public async Task LostAllocationEndsTheClientWithTheRefreshError()
    {
        await using var echo = new UdpEcho();
        var server = await Support.FreePlainServerAsync();
        string state = Directory.CreateTempSubdirectory("pthost-turn-lost-").FullName;
        var signals = new SignalEnvelopes(server: false, (_, _) => { }, NullLogger.Instance).For("plain");
        var plain = BuiltInTransports.All.Single(t => t.Name == "plain").Create();
        await using var factory = plain.CreateClientFactory(new TransportEnvironment("plain", new JObject { ["serverAddress"] = server.EndPoint.ToString() },
            state, signals, new DirectDialer(), NullLoggerFactory.Instance, new TransportCounters()));
        var limits = new TurnLimits { DefaultLifetime = TimeSpan.FromSeconds(4), MaxLifetime = TimeSpan.FromSeconds(4) };
        await using var listener = new TurnListener("plain", new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm,
            new Dictionary<string, string> { [User] = Password }, limits), factory, NullLogger.Instance);
        listener.Start();
        using var udp = new TurnUdpClient(listener.LocalEndPoint, User, Password);
        await udp.AllocateAsync(CancellationToken.None);
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await udp.SendAsync(new byte[] { 0, 0, 0, 7 }, echo.EndPoint, limit.Token);
        AssertEchoed(await ReceiveOrNullAsync(udp, limit.Token), 7, echo.EndPoint, "before the server process exited");
        Assert.Null(udp.Failure);

        await server.DisposeAsync();
        // ReceiveAsync ends with the refresh's error (within a refresh interval of 2 s), not at the test's limit.
        var error = await Assert.ThrowsAsync<TurnException>(async () => await udp.ReceiveAsync(limit.Token));
        Assert.Equal(437, error.Code);
        Assert.False(limit.IsCancellationRequested);
        Assert.Equal(0, listener.Server.AllocationCount);
        Assert.Equal(437, Assert.IsType<TurnException>(udp.Failure).Code);
        Assert.Equal(437, (await Assert.ThrowsAsync<TurnException>(async () => await udp.SendAsync(new byte[4], echo.EndPoint, limit.Token))).Code);
    }

    private static async Task<System.Net.Sockets.UdpReceiveResult?> ReceiveOrNullAsync(TurnUdpClient udp, CancellationToken ct)
    {
        try { return await udp.ReceiveAsync(ct); }
        catch (OperationCanceledException) { return null; }
    }

    private static void AssertEchoed(System.Net.Sockets.UdpReceiveResult? got, int expected, IPEndPoint peer, string when)
    {
        Assert.True(got is not null, $"datagram {expected} was lost {when}");
        Assert.Equal(peer, got.Value.RemoteEndPoint);
        Assert.Equal(expected, BinaryPrimitives.ReadInt32BigEndian(got.Value.Buffer));
    }
}
