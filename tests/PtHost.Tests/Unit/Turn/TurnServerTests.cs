using System.Buffers.Binary;
using System.Net;
using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Contract;
using PtHost.Tests.Unit.Support;
using PtHost.Turn;

namespace PtHost.Tests.Unit.Turn;

/// <summary>The TURN state machine (RFC 5766, long-term credentials of RFC 5389 §10.2) with fake clients and sessions.</summary>
public class TurnServerTests : IAsyncDisposable
{
    internal const string Realm = "example.org", User = "test", Password = "secret";
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private readonly FakeTime _time = new(new DateTimeOffset(2026, 11, 30, 8, 0, 0, TimeSpan.Zero));
    private readonly List<FakeSession> _sessions = [];
    private TurnServer _server;

    public TurnServerTests() => _server = Create(new TurnLimits());

    private TurnServer Create(TurnLimits limits) =>
        new(new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm, new Dictionary<string, string> { [User] = Password, ["other"] = "pw2" }, limits),
            (id, ct) =>
            {
                var s = new FakeSession();
                lock (_sessions) _sessions.Add(s);
                return ValueTask.FromResult<IAssociation>(s);
            }, NullLogger.Instance, _time);

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    private static readonly PeerAddress Peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.7"), 4000));
    private static readonly PeerAddress Peer2 = PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.8"), 4000));

    // ---- Binding and framing -------------------------------------------------------------------

    [Fact]
    public async Task Binding_request_gets_xor_mapped_address_without_credentials()
    {
        var client = new FakeClient("203.0.113.5", 5555);
        var tid = Tid();
        _server.Handle(client, Build(StunMethod.Binding, StunClass.Request, tid, (ref StunWriter _) => { }));
        var r = await client.NextAsync();
        Assert.Equal(StunClass.Success, r.Class);
        Assert.Equal(tid, r.TransactionId);
        Assert.Equal(client.Remote, r.XorAddress(StunAttribute.XorMappedAddress));
    }

    [Theory]
    [InlineData("00")]                                           // too short
    [InlineData("0001000021120000000000000000000000000000")]     // bad cookie
    [InlineData("000100052112a442000000000000000000000000")]     // length not a multiple of 4
    [InlineData("000100082112a442000000000000000000000000802200")] // length overruns the datagram
    [InlineData("000100042112a44200000000000000000000000080220009")] // attribute overruns
    [InlineData("c0010000")]                                     // neither STUN nor ChannelData
    public async Task Malformed_messages_are_dropped_and_the_server_keeps_serving(string hex)
    {
        var client = new FakeClient("203.0.113.5", 5555);
        long before = _server.Dropped;
        _server.Handle(client, Convert.FromHexString(hex));
        Assert.Equal(before + 1, _server.Dropped);
        Assert.Equal(0, client.Pending);
        _server.Handle(client, Build(StunMethod.Binding, StunClass.Request, Tid(), (ref StunWriter _) => { }));
        Assert.Equal(StunClass.Success, (await client.NextAsync()).Class);
    }

    [Fact]
    public async Task Unknown_method_request_gets_400()
    {
        var client = new FakeClient("203.0.113.5", 5555);
        _server.Handle(client, Build(0x00a, StunClass.Request, Tid(), (ref StunWriter _) => { }));
        Assert.Equal(400, (await client.NextAsync()).ErrorCode);
    }

    // ---- credentials -------------------------------------------------------------------------

    [Fact]
    public async Task Allocate_without_integrity_gets_401_with_realm_and_nonce()
    {
        var client = new FakeClient("203.0.113.5", 5555);
        _server.Handle(client, Build(StunMethod.Allocate, StunClass.Request, Tid(), (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24)));
        var r = await client.NextAsync();
        Assert.Equal(401, r.ErrorCode);
        Assert.Equal(Realm, r.String(StunAttribute.Realm));
        Assert.Equal(32, r.String(StunAttribute.Nonce)!.Length);
        Assert.False(r.HasIntegrity);
    }

    [Fact]
    public async Task Allocate_with_good_credentials_succeeds_with_relayed_mapped_and_lifetime()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        var r = await t.AllocateAsync();
        Assert.Equal(StunClass.Success, r.Class);
        Assert.True(r.IntegrityVerifies(Stun.LongTermKey(User, Realm, Password)));
        Assert.Equal(FakeSession.Relayed, r.XorAddress(StunAttribute.XorRelayedAddress));
        Assert.Equal(t.Client.Remote, r.XorAddress(StunAttribute.XorMappedAddress));
        Assert.Equal(600u, r.UInt32(StunAttribute.Lifetime));
        Assert.Equal(1, _server.AllocationCount);
    }

    [Fact]
    public async Task Wrong_password_gets_401()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555), password: "wrong");
        Assert.Equal(401, (await t.AllocateAsync()).ErrorCode);
        Assert.Equal(0, _server.AllocationCount);
    }

    [Fact]
    public async Task Unknown_user_gets_401()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555), user: "nobody");
        Assert.Equal(401, (await t.AllocateAsync()).ErrorCode);
    }

    [Fact]
    public async Task Integrity_over_altered_bytes_gets_401()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        // No FINGERPRINT, or the altered byte would be caught there first (and the message dropped).
        byte[] request = t.Request(StunMethod.Allocate, Tid(), (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24), fingerprint: false);
        request[25] ^= 0x01; // a reserved byte of REQUESTED-TRANSPORT's value: the message stays well-formed, the integrity no longer matches
        _server.Handle(t.Client, request);
        Assert.Equal(401, (await t.Client.NextAsync()).ErrorCode);
    }

    [Fact]
    public async Task Integrity_without_username_realm_or_nonce_gets_400()
    {
        var client = new FakeClient("203.0.113.5", 5555);
        _server.Handle(client, Build(StunMethod.Allocate, StunClass.Request, Tid(), (ref StunWriter w) =>
        {
            w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24);
            w.AddIntegrity(Stun.LongTermKey(User, Realm, Password));
        }));
        Assert.Equal(400, (await client.NextAsync()).ErrorCode);
    }

    [Fact]
    public async Task Stale_nonce_gets_438_with_a_fresh_nonce_and_the_retry_succeeds()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        string old = t.Nonce!;
        _time.Now += TimeSpan.FromSeconds(601);
        var r = await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24));
        Assert.Equal(438, r.ErrorCode);
        Assert.Equal(Realm, r.String(StunAttribute.Realm));
        string fresh = r.String(StunAttribute.Nonce)!;
        Assert.NotEqual(old, fresh);
        t.Nonce = fresh;
        Assert.Equal(StunClass.Success, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24))).Class);
    }

    [Fact]
    public async Task Forged_nonce_or_another_clients_nonce_gets_438()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        t.Nonce = "0000000000000000" + "0123456789abcdef";
        Assert.Equal(438, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24))).ErrorCode);
        var other = new TurnTestClient(_server, new FakeClient("203.0.113.6", 5555));
        await other.ChallengeAsync();
        t.Nonce = other.Nonce; // bound to the other client's address
        Assert.Equal(438, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24))).ErrorCode);
    }

    // ---- Allocate ------------------------------------------------------------------------------

    [Fact]
    public async Task Unknown_comprehension_required_attribute_gets_420_listing_it()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        var r = await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) =>
        {
            w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24);
            w.AddUInt32(0x0030, 1);             // comprehension-required, unknown
            w.AddUInt32(0x8030, 1);             // comprehension-optional: ignored
            w.Add(StunAttribute.DontFragment, []); // not supported here (spec/turn.md §3.2)
        });
        Assert.Equal(420, r.ErrorCode);
        Assert.True(r.Message.TryGet(StunAttribute.UnknownAttributes, out var u));
        Assert.Equal(new byte[] { 0x00, 0x30, 0x00, 0x1a }, u);
        Assert.Equal(0, _server.AllocationCount);
    }

    [Fact]
    public async Task Missing_requested_transport_gets_400_and_tcp_gets_442()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        Assert.Equal(400, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter _) => { })).ErrorCode);
        Assert.Equal(442, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 6u << 24))).ErrorCode);
    }

    [Fact]
    public async Task Ipv6_relay_request_gets_440()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        Assert.Equal(440, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) =>
        {
            w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24);
            w.AddUInt32(StunAttribute.RequestedAddressFamily, 2u << 24);
        })).ErrorCode);
    }

    [Fact]
    public async Task Second_allocate_gets_437_and_a_retransmission_gets_the_same_success()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        byte[] tid = Tid();
        byte[] request = t.Request(StunMethod.Allocate, tid, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24));
        _server.Handle(t.Client, request);
        var first = await t.Client.NextAsync();
        Assert.Equal(StunClass.Success, first.Class);
        _server.Handle(t.Client, request);
        var again = await t.Client.NextAsync();
        Assert.Equal(first.Bytes, again.Bytes);
        Assert.Equal(437, (await t.SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24))).ErrorCode);
        Assert.Single(_sessions);
    }

    [Fact]
    public async Task Per_user_quota_gets_486()
    {
        _server = Create(new TurnLimits { MaxAllocationsPerUser = 1 });
        Assert.Equal(StunClass.Success, (await new TurnTestClient(_server, new FakeClient("203.0.113.5", 1)).AllocateAsync()).Class);
        Assert.Equal(486, (await new TurnTestClient(_server, new FakeClient("203.0.113.5", 2)).AllocateAsync()).ErrorCode);
        Assert.Equal(StunClass.Success, (await new TurnTestClient(_server, new FakeClient("203.0.113.5", 3), user: "other", password: "pw2").AllocateAsync()).Class);
    }

    [Fact]
    public async Task Total_limit_gets_508()
    {
        _server = Create(new TurnLimits { MaxAllocations = 1 });
        Assert.Equal(StunClass.Success, (await new TurnTestClient(_server, new FakeClient("203.0.113.5", 1)).AllocateAsync()).Class);
        Assert.Equal(508, (await new TurnTestClient(_server, new FakeClient("203.0.113.5", 2), user: "other", password: "pw2").AllocateAsync()).ErrorCode);
    }

    [Fact]
    public async Task Transport_failure_gets_508_and_frees_the_quota()
    {
        int calls = 0;
        _server = new TurnServer(new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm, new Dictionary<string, string> { [User] = Password }, new TurnLimits { MaxAllocationsPerUser = 1 }),
            (id, ct) => ++calls == 1
                ? throw new TransportConnectException(ConnectFailure.ConnectionRefused, "server refused")
                : ValueTask.FromResult<IAssociation>(new FakeSession()), NullLogger.Instance, _time);
        var r = await new TurnTestClient(_server, new FakeClient("203.0.113.5", 1)).AllocateAsync();
        Assert.Equal(508, r.ErrorCode);
        Assert.Contains("server refused", r.Reason);
        Assert.Equal(StunClass.Success, (await new TurnTestClient(_server, new FakeClient("203.0.113.5", 2)).AllocateAsync()).Class);
    }

    // ---- Refresh -------------------------------------------------------------------------------

    [Fact]
    public async Task Refresh_without_allocation_gets_437()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.ChallengeAsync();
        Assert.Equal(437, (await t.SendAsync(StunMethod.Refresh, (ref StunWriter _) => { })).ErrorCode);
    }

    [Fact]
    public async Task Refresh_with_lifetime_0_deletes_the_allocation_and_closes_its_session()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        var r = await t.SendAsync(StunMethod.Refresh, (ref StunWriter w) => w.AddUInt32(StunAttribute.Lifetime, 0));
        Assert.Equal(StunClass.Success, r.Class);
        Assert.Equal(0u, r.UInt32(StunAttribute.Lifetime));
        Assert.Equal(0, _server.AllocationCount);
        await _sessions[0].Disposed.Task.WaitAsync(Wait);
        Assert.Equal(437, (await t.SendAsync(StunMethod.Refresh, (ref StunWriter _) => { })).ErrorCode);
    }

    [Fact]
    public async Task Refresh_extends_the_lifetime_clamped_to_the_maximum()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        var r = await t.SendAsync(StunMethod.Refresh, (ref StunWriter w) => w.AddUInt32(StunAttribute.Lifetime, 100000));
        Assert.Equal(3600u, r.UInt32(StunAttribute.Lifetime));
        _time.Now += TimeSpan.FromSeconds(3000);
        _server.Expire();
        Assert.Equal(1, _server.AllocationCount);
        _time.Now += TimeSpan.FromSeconds(601);
        _server.Expire();
        Assert.Equal(0, _server.AllocationCount);
        await _sessions[0].Disposed.Task.WaitAsync(Wait);
    }

    [Fact]
    public async Task Another_user_on_the_same_5_tuple_gets_441()
    {
        var client = new FakeClient("203.0.113.5", 5555);
        await new TurnTestClient(_server, client).AllocateAsync();
        var intruder = new TurnTestClient(_server, client, user: "other", password: "pw2");
        await intruder.ChallengeAsync();
        Assert.Equal(441, (await intruder.SendAsync(StunMethod.Refresh, (ref StunWriter _) => { })).ErrorCode);
        Assert.Equal(441, (await intruder.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, Peer))).ErrorCode);
    }

    [Fact]
    public async Task Unallocated_client_allocation_expires_after_its_lifetime()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        _time.Now += TimeSpan.FromSeconds(601);
        _server.Expire();
        Assert.Equal(0, _server.AllocationCount);
    }

    // ---- permissions, Send/Data ------------------------------------------------------------------

    [Fact]
    public async Task CreatePermission_refused_by_the_server_process_gets_403()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        _sessions[0].Refuse.Add(Peer);
        Assert.Equal(403, (await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, Peer))).ErrorCode);
        t.SendIndication(Peer, "x"u8.ToArray());
        Assert.Empty(_sessions[0].Sent);
    }

    [Fact]
    public async Task CreatePermission_without_peer_gets_400()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        Assert.Equal(400, (await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter _) => { })).ErrorCode);
    }

    [Fact]
    public async Task Send_indication_needs_a_permission_and_data_comes_back_as_data_indication()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        var session = _sessions[0];
        t.SendIndication(Peer, "early"u8.ToArray());
        Assert.Empty(session.Sent); // no permission yet: dropped
        Assert.Equal(StunClass.Success, (await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, Peer))).Class);
        t.SendIndication(Peer.WithPort(9999), "hello"u8.ToArray()); // permissions are per IP address, any port
        var sent = Assert.Single(session.Sent);
        Assert.Equal(Peer.WithPort(9999), sent.Peer);
        Assert.Equal("hello"u8.ToArray(), sent.Payload);

        session.Deliver(Peer2, "not permitted"u8.ToArray());
        session.Deliver(Peer, "reply"u8.ToArray());
        var data = await t.Client.NextAsync();
        Assert.Equal(StunClass.Indication, data.Class);
        Assert.Equal(StunMethod.Data, data.Method);
        Assert.Equal(Peer, data.XorAddress(StunAttribute.XorPeerAddress));
        Assert.True(data.Message.TryGet(StunAttribute.Data, out var payload));
        Assert.Equal("reply"u8.ToArray(), payload);
        Assert.Equal(0, t.Client.Pending); // the unpermitted peer's datagram was not delivered
    }

    [Theory]
    [InlineData("2001:db8::7", 1)]
    [InlineData("2001:db8::7", 4)]
    [InlineData("192.0.2.7", 0)]
    [InlineData("192.0.2.7", 3)]
    public async Task Data_indication_is_well_formed_for_both_families_and_any_padding(string ip, int length)
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        var peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse(ip), 4000));
        Assert.Equal(StunClass.Success, (await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, peer))).Class);
        byte[] payload = [.. Enumerable.Range(1, length).Select(i => (byte)i)];
        _sessions[0].Deliver(peer, payload);
        var data = await t.Client.NextAsync();
        Assert.Equal(StunMethod.Data, data.Method);
        Assert.Equal(peer, data.XorAddress(StunAttribute.XorPeerAddress));
        Assert.True(data.Message.TryGet(StunAttribute.Data, out var got));
        Assert.Equal(payload, got.ToArray());
        Assert.Equal(0, data.Bytes.Length % 4);
    }

    [Fact]
    public async Task Permission_expires_after_300_seconds()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, Peer));
        _time.Now += TimeSpan.FromSeconds(301);
        _server.Expire();
        t.SendIndication(Peer, "late"u8.ToArray());
        Assert.Empty(_sessions[0].Sent);
    }

    [Fact]
    public async Task Permission_limit_gets_508()
    {
        _server = Create(new TurnLimits { MaxPermissions = 1 });
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        Assert.Equal(StunClass.Success, (await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, Peer))).Class);
        Assert.Equal(508, (await t.SendAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, Peer2))).ErrorCode);
    }

    // ---- channels ------------------------------------------------------------------------------

    [Theory]
    [InlineData(0x3FFF)]
    [InlineData(0x8000)]
    public async Task ChannelBind_outside_0x4000_0x7FFF_gets_400(int channel)
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        Assert.Equal(400, (await t.SendAsync(StunMethod.ChannelBind, (ref StunWriter w) =>
        {
            w.AddUInt32(StunAttribute.ChannelNumber, (uint)channel << 16);
            w.AddXorAddress(StunAttribute.XorPeerAddress, Peer);
        })).ErrorCode);
    }

    [Fact]
    public async Task ChannelBind_carries_channel_data_both_ways_and_refuses_rebinding()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        var session = _sessions[0];
        Assert.Equal(StunClass.Success, (await t.BindAsync(0x4001, Peer)).Class);
        Assert.Equal(StunClass.Success, (await t.BindAsync(0x4001, Peer)).Class); // refresh
        Assert.Equal(400, (await t.BindAsync(0x4001, Peer2)).ErrorCode);
        Assert.Equal(400, (await t.BindAsync(0x4002, Peer)).ErrorCode);

        _server.Handle(t.Client, new byte[] { 0x40, 0x01, 0x00, 0x03, (byte)'a', (byte)'b', (byte)'c', 0 });
        var sent = Assert.Single(session.Sent);
        Assert.Equal(Peer, sent.Peer);
        Assert.Equal("abc"u8.ToArray(), sent.Payload);

        _server.Handle(t.Client, new byte[] { 0x40, 0x07, 0x00, 0x01, (byte)'z', 0, 0, 0 }); // unbound channel: dropped
        _server.Handle(t.Client, new byte[] { 0x40, 0x01, 0x00, 0x09, (byte)'z', 0, 0, 0 }); // length overruns: dropped
        Assert.Single(session.Sent);

        session.Deliver(Peer, "pong"u8.ToArray());
        var reply = await t.Client.NextRawAsync();
        Assert.Equal(new byte[] { 0x40, 0x01, 0x00, 0x04, (byte)'p', (byte)'o', (byte)'n', (byte)'g' }, reply);
    }

    [Fact]
    public async Task Channel_data_to_a_tcp_client_is_padded_to_4_bytes()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555, stream: true));
        await t.AllocateAsync();
        await t.BindAsync(0x4001, Peer);
        _sessions[0].Deliver(Peer, "12345"u8.ToArray());
        var reply = await t.Client.NextRawAsync();
        Assert.Equal(new byte[] { 0x40, 0x01, 0x00, 0x05, (byte)'1', (byte)'2', (byte)'3', (byte)'4', (byte)'5', 0, 0, 0 }, reply);
    }

    [Fact]
    public async Task ChannelBind_refused_by_the_server_process_gets_403()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        _sessions[0].Refuse.Add(Peer);
        Assert.Equal(403, (await t.BindAsync(0x4001, Peer)).ErrorCode);
    }

    [Fact]
    public async Task Channel_expires_after_600_seconds()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        await t.BindAsync(0x4001, Peer);
        await t.SendAsync(StunMethod.Refresh, (ref StunWriter w) => w.AddUInt32(StunAttribute.Lifetime, 3600));
        _time.Now += TimeSpan.FromSeconds(601);
        _server.Expire();
        _server.Handle(t.Client, new byte[] { 0x40, 0x01, 0x00, 0x01, (byte)'z', 0, 0, 0 });
        Assert.Empty(_sessions[0].Sent);
    }

    [Fact]
    public async Task Expired_channel_and_peer_cannot_be_bound_otherwise_for_5_minutes()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        await t.SendAsync(StunMethod.Refresh, (ref StunWriter w) => w.AddUInt32(StunAttribute.Lifetime, 3600));
        Assert.Equal(StunClass.Success, (await t.BindAsync(0x4001, Peer)).Class);
        _time.Now += TimeSpan.FromSeconds(601);
        _server.Expire();
        await t.ChallengeAsync(); // the nonce (600 s) is stale too
        Assert.Equal(400, (await t.BindAsync(0x4001, Peer2)).ErrorCode);
        Assert.Equal(400, (await t.BindAsync(0x4002, Peer)).ErrorCode);
        _time.Now += TimeSpan.FromSeconds(301);
        _server.Expire();
        await t.ChallengeAsync();
        Assert.Equal(StunClass.Success, (await t.BindAsync(0x4001, Peer2)).Class);
        Assert.Equal(StunClass.Success, (await t.BindAsync(0x4002, Peer)).Class);
    }

    [Fact]
    public async Task Expired_binding_may_be_renewed_with_the_same_channel_and_peer()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        await t.SendAsync(StunMethod.Refresh, (ref StunWriter w) => w.AddUInt32(StunAttribute.Lifetime, 3600));
        await t.BindAsync(0x4001, Peer);
        _time.Now += TimeSpan.FromSeconds(601);
        _server.Expire();
        await t.ChallengeAsync();
        Assert.Equal(StunClass.Success, (await t.BindAsync(0x4001, Peer)).Class);
    }

    [Fact]
    public async Task Session_end_deletes_the_allocation()
    {
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        _sessions[0].End();
        await Eventually.HoldsWithinAsync(() => _server.AllocationCount == 0, TimeSpan.FromSeconds(10));
        Assert.Equal(0, _server.AllocationCount);
    }

    [Fact]
    public async Task Tcp_client_going_away_deletes_its_allocation()
    {
        var client = new FakeClient("203.0.113.5", 5555, stream: true);
        await new TurnTestClient(_server, client).AllocateAsync();
        _server.ClientGone(client);
        Assert.Equal(0, _server.AllocationCount);
        await _sessions[0].Disposed.Task.WaitAsync(Wait);
    }

    [Fact]
    public async Task Allocations_and_payload_bytes_are_counted_for_status_lines()
    {
        var counters = new TransportCounters();
        _server = new TurnServer(new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm, new Dictionary<string, string> { [User] = Password }),
            (id, ct) =>
            {
                var s = new FakeSession();
                lock (_sessions) _sessions.Add(s);
                return ValueTask.FromResult<IAssociation>(s);
            }, NullLogger.Instance, _time, counters);
        var t = new TurnTestClient(_server, new FakeClient("203.0.113.5", 5555));
        await t.AllocateAsync();
        await t.BindAsync(0x4001, Peer);
        _server.Handle(t.Client, new byte[] { 0x40, 0x01, 0x00, 0x03, (byte)'a', (byte)'b', (byte)'c', 0 });
        _sessions[0].Deliver(Peer, "12345"u8.ToArray());
        await t.Client.NextRawAsync();
        var during = counters.Snapshot();
        Assert.Equal((1L, 1L, 0L, 3L, 5L), (during.SessionsOpened, during.SessionsActive, during.SessionsFailed, during.BytesIn, during.BytesOut));
        await t.SendAsync(StunMethod.Refresh, (ref StunWriter w) => w.AddUInt32(StunAttribute.Lifetime, 0));
        Assert.Equal(0, counters.Snapshot().SessionsActive);
    }

    // ---- helpers -------------------------------------------------------------------------------

    internal static byte[] Tid() => System.Security.Cryptography.RandomNumberGenerator.GetBytes(12);

    internal delegate void Attributes(ref StunWriter w);

    internal static byte[] Build(int method, StunClass @class, byte[] tid, Attributes attributes)
    {
        Span<byte> buffer = stackalloc byte[2048];
        var w = new StunWriter(buffer, method, @class, tid);
        attributes(ref w);
        return w.Written.ToArray();
    }
}

/// <summary>A client of the state machine: what it was sent, in order.</summary>
internal sealed class FakeClient(string ip, int port, bool stream = false) : TurnClient(PeerAddress.From(new IPEndPoint(IPAddress.Parse(ip), port)))
{
    private readonly Channel<byte[]> _received = Channel.CreateUnbounded<byte[]>();

    public override bool IsStream => stream;

    public int Pending => _received.Reader.Count;

    public override void Send(ReadOnlySpan<byte> message) => _received.Writer.TryWrite(message.ToArray());

    public async Task<byte[]> NextRawAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        return await _received.Reader.ReadAsync(cts.Token);
    }

    public async Task<Parsed> NextAsync() => new(await NextRawAsync());
}

/// <summary>A received STUN message, parsed on demand.</summary>
internal sealed class Parsed(byte[] bytes)
{
    public byte[] Bytes { get; } = bytes;
    public StunMessage Message => Stun.TryParse(Bytes, out var m) == StunParseError.None ? m : throw new Xunit.Sdk.XunitException("not STUN");
    public StunClass Class => Message.Class;
    public int Method => Message.Method;
    public byte[] TransactionId => Message.TransactionId.ToArray();
    public bool HasIntegrity => Message.HasIntegrity;
    public bool IntegrityVerifies(byte[] key) => Stun.CheckIntegrity(Message, key);

    public int ErrorCode => Message.TryGet(StunAttribute.ErrorCode, out var v) ? v[2] * 100 + v[3] : 0;
    public string Reason => Message.TryGet(StunAttribute.ErrorCode, out var v) ? Encoding.UTF8.GetString(v[4..]) : "";
    public string? String(ushort type) => Message.TryGet(type, out var v) ? Encoding.UTF8.GetString(v) : null;
    public uint UInt32(ushort type) => Message.TryGet(type, out var v) ? BinaryPrimitives.ReadUInt32BigEndian(v) : throw new Xunit.Sdk.XunitException($"no 0x{type:x4}");

    public PeerAddress XorAddress(ushort type)
    {
        var m = Message;
        return m.TryGet(type, out var v) && Stun.TryReadXorAddress(v, m.TransactionId, out var a) ? a : throw new Xunit.Sdk.XunitException($"no 0x{type:x4}");
    }
}

/// <summary>A TURN client speaking the long-term credential mechanism to a <see cref="TurnServer"/>.</summary>
internal sealed class TurnTestClient(TurnServer server, FakeClient client, string user = TurnServerTests.User, string password = TurnServerTests.Password)
{
    public FakeClient Client { get; } = client;
    public string? Nonce { get; set; }
    private readonly byte[] _key = Stun.LongTermKey(user, TurnServerTests.Realm, password);

    public async Task ChallengeAsync()
    {
        server.Handle(Client, TurnServerTests.Build(StunMethod.Allocate, StunClass.Request, TurnServerTests.Tid(), (ref StunWriter w) => { }));
        var r = await Client.NextAsync();
        Assert.Equal(401, r.ErrorCode);
        Nonce = r.String(StunAttribute.Nonce);
    }

    public byte[] Request(int method, byte[] tid, TurnServerTests.Attributes attributes, bool fingerprint = true)
    {
        string nonce = Nonce!;
        return TurnServerTests.Build(method, StunClass.Request, tid, (ref StunWriter w) =>
        {
            attributes(ref w);
            w.AddString(StunAttribute.Username, user);
            w.AddString(StunAttribute.Realm, TurnServerTests.Realm);
            w.AddString(StunAttribute.Nonce, nonce);
            w.AddIntegrity(_key);
            if (fingerprint) w.AddFingerprint();
        });
    }

    public async Task<Parsed> SendAsync(int method, TurnServerTests.Attributes attributes)
    {
        server.Handle(Client, Request(method, TurnServerTests.Tid(), attributes));
        return await Client.NextAsync();
    }

    public async Task<Parsed> AllocateAsync()
    {
        await ChallengeAsync();
        return await SendAsync(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24));
    }

    public Task<Parsed> BindAsync(ushort channel, PeerAddress peer) => SendAsync(StunMethod.ChannelBind, (ref StunWriter w) =>
    {
        w.AddUInt32(StunAttribute.ChannelNumber, (uint)channel << 16);
        w.AddXorAddress(StunAttribute.XorPeerAddress, peer);
    });

    public void SendIndication(PeerAddress peer, byte[] data) =>
        server.Handle(Client, TurnServerTests.Build(StunMethod.Send, StunClass.Indication, TurnServerTests.Tid(), (ref StunWriter w) =>
        {
            w.AddXorAddress(StunAttribute.XorPeerAddress, peer);
            w.Add(StunAttribute.Data, data);
        }));
}

/// <summary>A datagram session that records what is sent and delivers what the test says.</summary>
internal sealed class FakeSession : IAssociation
{
    public static readonly PeerAddress Relayed = PeerAddress.From(new IPEndPoint(IPAddress.Parse("198.51.100.1"), 50000));
    private readonly Channel<(PeerAddress, byte[])> _incoming = Channel.CreateUnbounded<(PeerAddress, byte[])>();
    private readonly List<(PeerAddress Peer, byte[] Payload)> _sent = [];

    public HashSet<PeerAddress> Refuse { get; } = [];
    public TaskCompletionSource Disposed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public List<(PeerAddress Peer, byte[] Payload)> Sent { get { lock (_sent) return [.. _sent]; } }
    public int MaxDatagramSize => 65000;
    public PeerAddress RelayedAddress => Relayed;

    public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        lock (_sent) _sent.Add((peer, payload.ToArray()));
        return ValueTask.CompletedTask;
    }

    public ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken) => ValueTask.FromResult(!Refuse.Contains(peer));

    public void Deliver(PeerAddress peer, byte[] payload) => _incoming.Writer.TryWrite((peer, payload));

    public void End() => _incoming.Writer.TryComplete();

    public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        try
        {
            var (peer, payload) = await _incoming.Reader.ReadAsync(cancellationToken);
            payload.CopyTo(buffer);
            return (peer, payload.Length);
        }
        catch (ChannelClosedException) { return (default, -1); }
    }

    public ValueTask DisposeAsync()
    {
        _incoming.Writer.TryComplete();
        Disposed.TrySetResult();
        return ValueTask.CompletedTask;
    }
}
