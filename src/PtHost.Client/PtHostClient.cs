using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json.Nodes;

namespace PtHost.Client;

/// <summary>
/// A client pthost (spec/adapters.md §5.2): started with pthost's client document (spec/ipc.md §3.2), it opens
/// transport connections through the SOCKS5 front end (§2.2), UDP through the TURN front end (§2.8), and
/// carries signals and statistics.
/// </summary>
public sealed class PtHostClient : PtHostInstance
{
    private readonly Dictionary<string, IPEndPoint> _socks = new(StringComparer.Ordinal);
    private readonly Dictionary<string, IPEndPoint> _turn = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TransportStartException> _errors = new(StringComparer.Ordinal);
    private readonly List<string> _transports = [];

    private PtHostClient() : base(server: false) { }

    public override IReadOnlyList<string> Transports => _transports;

    /// <summary>The transports that failed to start, by name (<c>CMETHOD-ERROR</c>).</summary>
    public IReadOnlyDictionary<string, TransportStartException> TransportErrors => _errors;

    /// <summary>The TURN user the adapter made or the configuration's first user: (realm, user, password).</summary>
    public (string Realm, string User, string Password)? TurnCredentials { get; private set; }

    public static Task<PtHostClient> StartAsync(string configJson, PtHostOptions? options = null, CancellationToken ct = default) =>
        StartAsync(Parse(configJson), options, ct);

    /// <summary>Starts pthost with <paramref name="config"/> (a copy is changed as spec/adapters.md §2.3 says) and returns once <c>CMETHODS DONE</c> was read.</summary>
    public static async Task<PtHostClient> StartAsync(JsonObject config, PtHostOptions? options = null, CancellationToken ct = default)
    {
        config = Prepare((JsonObject)config.DeepClone(), "client");
        var client = new PtHostClient();
        client.TurnCredentials = AddTurn(config);
        var lines = await client.LaunchAsync(options ?? new PtHostOptions(), config, "CMETHODS DONE", ct).ConfigureAwait(false);
        foreach (var line in lines)
        {
            var p = line.Split(' ');
            if (p is ["CMETHOD", var t, "socks5", var addr])
            {
                client._socks[t] = IPEndPoint.Parse(addr);
                client._transports.Add(t);
            }
            else if (p is ["CMETHOD", var tt, "turn", var taddr]) client._turn[tt] = IPEndPoint.Parse(taddr);
            else if (line.StartsWith("CMETHOD-ERROR ", StringComparison.Ordinal))
            {
                var e = PtHostProcess.MethodError(line);
                client._errors[e.Transport] = e;
            }
        }
        return client;
    }

    /// <summary>§2.3 <c>turn</c>: a loopback listener with a random user unless the document has its own (or <c>"turn": false</c>).</summary>
    private static (string, string, string)? AddTurn(JsonObject config)
    {
        switch (config["turn"])
        {
            case null:
                string password = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
                config["turn"] = new JsonObject
                {
                    ["listenaddr"] = "127.0.0.1:0",
                    ["realm"] = "pthost-adapter",
                    ["users"] = new JsonObject { ["adapter"] = password },
                };
                return ("pthost-adapter", "adapter", password);
            case JsonValue v when v.GetValueKind() == System.Text.Json.JsonValueKind.False:
                config.Remove("turn");
                return null;
            case JsonObject turn when turn["users"] is JsonObject users && users.FirstOrDefault() is var (user, pw) && pw is not null:
                return (turn["realm"]?.ToString() ?? "", user, pw.ToString());
            default:
                return null;
        }
    }

    /// <summary>The SOCKS5 front end of <paramref name="transport"/> (<c>CMETHOD t socks5 ip:port</c>).</summary>
    public IPEndPoint GetSocksEndPoint(string transport) => _socks.TryGetValue(transport, out var ep) ? ep : throw NotStarted(transport);

    /// <summary>The TURN front end of <paramref name="transport"/> (<c>CMETHOD t turn ip:port</c>).</summary>
    public IPEndPoint GetTurnEndPoint(string transport) => _turn.TryGetValue(transport, out var ep) ? ep : throw NotStarted(transport, "turn");

    private Exception NotStarted(string transport, string what = "socks5")
    {
        if (Error is { } exited) return exited;
        if (_errors.TryGetValue(transport, out var e)) return e;
        return new ArgumentException($"transport '{transport}' has no {what} front end in this pthost", nameof(transport));
    }

    /// <summary>
    /// A transport connection to <paramref name="destination"/> (spec/adapters.md §2.2): a TCP connection to the
    /// transport's SOCKS5 front end, the settings as the JSON block of method 0x09, CONNECT; the stream is the
    /// application's socket from then on.
    /// </summary>
    public async Task<Stream> ConnectAsync(string transport, JsonObject? settings, EndPoint destination, CancellationToken ct = default)
    {
        if (Error is { } exited) throw exited;
        var socks = GetSocksEndPoint(transport);
        var socket = new Socket(socks.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(socks, ct).ConfigureAwait(false);
            await Socks5.HandshakeAsync(socket, settings, destination, Host, ct).ConfigureAwait(false);
            return new TransportStream(socket, Host);
        }
        catch (SocketException) when (Host.IsExiting)
        {
            socket.Dispose();
            throw Host.ExitError ?? new PtHostExitedException("pthost is exiting", null, Stderr);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public Task<Stream> ConnectAsync(string transport, JsonObject? settings, string host, int port, CancellationToken ct = default) =>
        ConnectAsync(transport, settings, IPAddress.TryParse(host, out var ip) ? new IPEndPoint(ip, port) : new DnsEndPoint(host, port), ct);

    /// <summary>A UDP client over <paramref name="transport"/>'s TURN front end (spec/adapters.md §2.8), allocated.</summary>
    public async Task<TurnUdpClient> CreateUdpClientAsync(string transport, CancellationToken ct = default)
    {
        var turn = GetTurnEndPoint(transport);
        var (realm, user, password) = TurnCredentials ?? throw new InvalidOperationException("this pthost has no TURN user the adapter knows");
        _ = realm;
        var udp = new TurnUdpClient(turn, user, password);
        try
        {
            await udp.AllocateAsync(ct).ConfigureAwait(false);
            return udp;
        }
        catch
        {
            udp.Dispose();
            throw;
        }
    }
}

/// <summary>
/// The application's socket after the handshake (spec/adapters.md §2.6): a NetworkStream that only looks at an end
/// of stream or a connection error, to report pthost's death as <see cref="PtHostDiedException"/>.
/// </summary>
internal sealed class TransportStream(Socket socket, PtHostProcess host) : NetworkStream(socket, ownsSocket: true)
{
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int n;
        try
        {
            n = await base.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e) when (host.IsExiting)
        {
            throw new PtHostDiedException(e);
        }
        if (n == 0 && buffer.Length > 0 && host.IsExiting) throw new PtHostDiedException(null);
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try
        {
            await base.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e) when (host.IsExiting)
        {
            throw new PtHostDiedException(e);
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
}

/// <summary>An open connection or UDP client whose pthost exited (spec/adapters.md §2.6 "pthost died").</summary>
public sealed class PtHostDiedException(Exception? inner)
    : IOException("pthost died: the transport connection is gone", inner);
