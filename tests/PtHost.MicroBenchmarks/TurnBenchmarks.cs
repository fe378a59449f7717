using System.Buffers.Binary;
using System.Net;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Contract;
using PtHost.Testing;
using PtHost.Turn;

namespace PtHost.MicroBenchmarks;

/// <summary>Messages for the TURN benchmarks, and a TURN server with one allocation and one channel bound.</summary>
internal static class Turn
{
    public const string Realm = "example.org", User = "alice", Password = "secret";
    public static readonly byte[] Key = Stun.LongTermKey(User, Realm, Password);
    public static readonly PeerAddress Peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.1"), 4000));

    public static byte[] Build(int method, ReadOnlySpan<byte> tid, byte[]? nonce, Action<StunWriterBox> attributes)
    {
        var buffer = new byte[1024];
        var box = new StunWriterBox();
        var w = new StunWriter(buffer, method, StunClass.Request, tid);
        attributes(box);
        foreach (var (type, value) in box.Attributes) w.Add(type, value);
        if (nonce is not null)
        {
            w.AddString(StunAttribute.Username, User);
            w.AddString(StunAttribute.Realm, Realm);
            w.Add(StunAttribute.Nonce, nonce);
            w.AddIntegrity(Key);
        }
        w.AddFingerprint();
        return buffer[..w.Length];
    }

    public static byte[] AllocateRequest() => Build(StunMethod.Allocate, new byte[12], new byte[32], a =>
    {
        a.UInt32(StunAttribute.RequestedTransport, 17u << 24);
        a.UInt32(StunAttribute.Lifetime, 600);
    });

    /// <summary>A server with an allocation for <paramref name="client"/> and channel 0x4000 bound to <see cref="Peer"/>.</summary>
    public static async Task<TurnServer> WithChannelAsync(Client client, Session session)
    {
        var server = new TurnServer(new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm, new Dictionary<string, string> { [User] = Password }),
            (_, _) => ValueTask.FromResult<IAssociation>(session), NullLogger.Instance);
        var tid = new byte[12];
        server.Handle(client, Build(StunMethod.Allocate, tid, null, a => a.UInt32(StunAttribute.RequestedTransport, 17u << 24)));
        Stun.TryParse(client.Last, out var challenge);
        challenge.TryGet(StunAttribute.Nonce, out var n);
        byte[] nonce = n.ToArray();
        tid[0] = 1;
        server.Handle(client, Build(StunMethod.Allocate, tid, nonce, a => a.UInt32(StunAttribute.RequestedTransport, 17u << 24)));
        await Eventually.TrueAsync(() => server.HasAllocation(client), "the allocation in the benchmark set-up", TimeSpan.FromSeconds(1));
        tid[0] = 2;
        var peerValue = new byte[8];
        Stun.WriteXorAddress(peerValue, Peer, tid);
        server.Handle(client, Build(StunMethod.ChannelBind, tid, nonce, a =>
        {
            a.UInt32(StunAttribute.ChannelNumber, 0x4000u << 16);
            a.Attributes.Add((StunAttribute.XorPeerAddress, peerValue));
        }));
        await Eventually.TrueAsync(() => Stun.TryParse(client.Last, out var answer) == StunParseError.None && answer.Method == StunMethod.ChannelBind,
            "the ChannelBind answer in the benchmark set-up", TimeSpan.FromSeconds(5));
        Stun.TryParse(client.Last, out var bound);
        if (bound.Class != StunClass.Success) throw new InvalidOperationException("ChannelBind failed in the benchmark set-up");
        return server;
    }

    public sealed class StunWriterBox
    {
        public readonly List<(ushort, byte[])> Attributes = [];

        public void UInt32(ushort type, uint value)
        {
            var b = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(b, value);
            Attributes.Add((type, b));
        }
    }

    public sealed class Client() : TurnClient(PeerAddress.From(new IPEndPoint(IPAddress.Parse("203.0.113.1"), 5000)))
    {
        public byte[] Last = [];
        public override bool IsStream => false;
        public override void Send(ReadOnlySpan<byte> message) => Last = message.ToArray();
    }

    public sealed class Session : IAssociation
    {
        private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public long Sent;
        public int MaxDatagramSize => 65_000;
        public PeerAddress RelayedAddress { get; } = PeerAddress.From(new IPEndPoint(IPAddress.Parse("198.51.100.1"), 50_000));

        public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
        {
            Sent++;
            return ValueTask.CompletedTask;
        }

        public ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken) => ValueTask.FromResult(true);

        public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
        {
            await _closed.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            return (default, -1);
        }

        public ValueTask DisposeAsync()
        {
            _closed.TrySetResult();
            return ValueTask.CompletedTask;
        }
    }
}

/// <summary>
/// The TURN server's per-datagram paths: ChannelData to a bound channel and a Send indication, each
/// handed to the association (a no-op session), and a Binding request answered.
/// </summary>
[MemoryDiagnoser]
public class TurnBenchmarks
{
    private readonly Turn.Client _client = new();
    private readonly Turn.Session _session = new();
    private TurnServer _server = null!;
    private byte[] _channelData = [], _send = [], _binding = [];

    [GlobalSetup]
    public void Setup()
    {
        _server = Turn.WithChannelAsync(_client, _session).GetAwaiter().GetResult();
        _channelData = new byte[4 + 1200];
        BinaryPrimitives.WriteUInt16BigEndian(_channelData, 0x4000);
        BinaryPrimitives.WriteUInt16BigEndian(_channelData.AsSpan(2), 1200);
        var tid = new byte[12];
        var peer = new byte[8];
        Stun.WriteXorAddress(peer, Turn.Peer, tid);
        var buffer = new byte[2048];
        var w = new StunWriter(buffer, StunMethod.Send, StunClass.Indication, tid);
        w.Add(StunAttribute.XorPeerAddress, peer);
        w.Add(StunAttribute.Data, new byte[1200]);
        _send = buffer[..w.Length];
        _binding = Turn.Build(StunMethod.Binding, tid, null, _ => { });
    }

    [GlobalCleanup]
    public void Cleanup() => _server.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Benchmark(Description = "TURN ChannelData 1200 B to a bound channel")]
    public void ChannelData() => _server.Handle(_client, _channelData);

    [Benchmark(Description = "TURN Send indication 1200 B")]
    public void SendIndication() => _server.Handle(_client, _send);

    [Benchmark(Description = "TURN Binding request answered")]
    public void Binding() => _server.Handle(_client, _binding);
}
