using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Testing;

/// <summary>A server pthost and a client pthost whose configuration has a <c>turn</c> key (spec/turn.md), and the TURN listener's address from its CMETHOD line.</summary>
public sealed class TurnChain : IAsyncDisposable
{
    public const string Realm = "example.org", User = "test", Password = "secret";

    public required PtChain Chain { get; init; }
    public required IPEndPoint TurnEndPoint { get; init; }

    public static async Task<TurnChain> StartAsync(JObject serverConfig, JObject? clientConfig = null, string transport = "plain") =>
        Of(await PtChain.StartAsync(serverConfig, server => clientConfig ?? ClientConfig(server, transport)), transport);

    /// <summary>The TURN chain of a started <paramref name="chain"/> whose client has a <c>turn</c> key.</summary>
    public static TurnChain Of(PtChain chain, string transport = "plain")
    {
        var line = chain.ClientStartup.Single(l => l.StartsWith($"CMETHOD {transport} turn ", StringComparison.Ordinal));
        return new TurnChain { Chain = chain, TurnEndPoint = IPEndPoint.Parse(line.Split(' ')[3]) };
    }

    public static JObject ClientConfig(IPEndPoint? server, string transport = "plain") => new()
    {
        ["role"] = "client",
        ["transports"] = new JArray(transport),
        ["options"] = new JObject { [transport] = new JObject { ["serverAddress"] = server?.ToString() } },
        ["turn"] = new JObject
        {
            ["listenaddr"] = "127.0.0.1:0",
            ["realm"] = Realm,
            ["users"] = new JObject { [User] = Password },
        },
        ["exit-on-stdin-close"] = true,
    };

    public ValueTask DisposeAsync() => Chain.DisposeAsync();
}

/// <summary>
/// A TURN client over UDP with the long-term credential mechanism (spec/turn.md §3.3), built on the codec:
/// allocations, permissions, Send and Data indications, and raw bytes, for the checks turnutils_uclient
/// cannot make (floods, quotas, junk).
/// </summary>
public sealed class UdpTurnClient : IDisposable, IAsyncDisposable
{
    public delegate void AttributeWriter(ref StunWriter w);

    private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly byte[] _key;
    private readonly string _user, _realm;
    private byte[] _nonce = [];

    /// <param name="local">The source address (default 127.0.0.1).</param>
    public UdpTurnClient(IPEndPoint server, string user = TurnChain.User, string realm = TurnChain.Realm, string password = TurnChain.Password, IPAddress? local = null)
    {
        _socket.Bind(new IPEndPoint(local ?? IPAddress.Loopback, 0));
        _socket.Connect(server);
        _user = user;
        _realm = realm;
        _key = Stun.LongTermKey(user, realm, password);
    }

    public static Task<UdpTurnClient> ConnectAsync(IPEndPoint server) => Task.FromResult(new UdpTurnClient(server));

    public Socket Socket => _socket;

    public void SendRaw(byte[] bytes) => _socket.Send(bytes);

    public static (ushort, byte[]) UInt32(ushort type, uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        return (type, b);
    }

    /// <summary>Sends a request with these attributes (signed once a nonce is known); 0 for success, otherwise the error code.</summary>
    public Task<int> RequestAsync(int method, params (ushort Type, byte[] Value)[] attributes) =>
        RequestAsync(method, (ref StunWriter w) => { foreach (var (type, value) in attributes) w.Add(type, value); });

    /// <summary>Sends a request (signed once a nonce is known) and returns 0 for success or the error code; the first request learns the nonce from its 401, a stale nonce gets a fresh one with 438.</summary>
    public async Task<int> RequestAsync(int method, AttributeWriter attributes)
    {
        bool signed = _nonce.Length > 0;
        int code = await ExchangeAsync(method, attributes).ConfigureAwait(false);
        if ((code == 401 && !signed && _nonce.Length > 0) || code == 438) code = await ExchangeAsync(method, attributes).ConfigureAwait(false);
        return code;
    }

    public Task<int> AllocateAsync() => RequestAsync(StunMethod.Allocate, UInt32(StunAttribute.RequestedTransport, 17u << 24));

    public Task<int> DeleteAsync() => RequestAsync(StunMethod.Refresh, UInt32(StunAttribute.Lifetime, 0));

    public Task<int> CreatePermissionAsync(PeerAddress peer) =>
        RequestAsync(StunMethod.CreatePermission, (ref StunWriter w) => w.AddXorAddress(StunAttribute.XorPeerAddress, peer));

    public void SendIndication(PeerAddress peer, byte[] data)
    {
        Span<byte> buffer = stackalloc byte[2048];
        var w = new StunWriter(buffer, StunMethod.Send, StunClass.Indication, NewTransactionId());
        w.AddXorAddress(StunAttribute.XorPeerAddress, peer);
        w.Add(StunAttribute.Data, data);
        _socket.Send(w.Written);
    }

    /// <summary>The next Data indication (other datagrams are skipped), within 20 s.</summary>
    public async Task<(PeerAddress From, byte[] Data)> ReceiveDataAsync()
    {
        byte[] buffer = new byte[70000];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (true)
        {
            int n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token).ConfigureAwait(false);
            if (TryReadData(buffer.AsSpan(0, n)) is { } data) return data;
        }
    }

    private static (PeerAddress, byte[])? TryReadData(ReadOnlySpan<byte> datagram)
    {
        if (Stun.TryParse(datagram, out var m) != StunParseError.None || m.Class != StunClass.Indication || m.Method != StunMethod.Data) return null;
        if (!m.TryGet(StunAttribute.XorPeerAddress, out var a) || !Stun.TryReadXorAddress(a, m.TransactionId, out var from)) return null;
        return m.TryGet(StunAttribute.Data, out var data) ? (from, data.ToArray()) : null;
    }

    private static byte[] NewTransactionId() => System.Security.Cryptography.RandomNumberGenerator.GetBytes(12);

    private byte[] Build(int method, byte[] tid, AttributeWriter attributes)
    {
        Span<byte> buffer = stackalloc byte[4096];
        var w = new StunWriter(buffer, method, StunClass.Request, tid);
        attributes(ref w);
        if (_nonce.Length > 0)
        {
            w.AddString(StunAttribute.Username, _user);
            w.AddString(StunAttribute.Realm, _realm);
            w.Add(StunAttribute.Nonce, _nonce);
            w.AddIntegrity(_key);
        }
        return w.Written.ToArray();
    }

    /// <summary>One transaction: retransmitted as RFC 5389 §7.2.1 says, generously spaced (4 s) for a loaded machine.</summary>
    private async Task<int> ExchangeAsync(int method, AttributeWriter attributes)
    {
        byte[] tid = NewTransactionId();
        byte[] request = Build(method, tid, attributes);
        var buffer = new byte[2048];
        for (int attempt = 0; attempt < 8; attempt++)
        {
            await _socket.SendAsync(request, SocketFlags.None).ConfigureAwait(false);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(4));
            try
            {
                while (true)
                {
                    int n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token).ConfigureAwait(false);
                    if (Answer(buffer.AsSpan(0, n), tid) is { } code) return code;
                }
            }
            catch (OperationCanceledException) { }
        }
        throw new TimeoutException($"no answer to STUN method 0x{method:x3} from the TURN listener");
    }

    /// <summary>The code of the answer to <paramref name="tid"/> (0 for success), learning its nonce; null for any other datagram.</summary>
    private int? Answer(ReadOnlySpan<byte> datagram, byte[] tid)
    {
        if (Stun.TryParse(datagram, out var m) != StunParseError.None || !m.TransactionId.SequenceEqual(tid)) return null;
        if (m.TryGet(StunAttribute.Nonce, out var nonce)) _nonce = nonce.ToArray();
        if (m.Class == StunClass.Success) return 0;
        return m.TryGet(StunAttribute.ErrorCode, out var e) && e.Length >= 4 ? e[2] * 100 + e[3] : -1;
    }

    public void Dispose() => _socket.Dispose();

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
