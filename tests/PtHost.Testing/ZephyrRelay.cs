using System.Net;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;
using PtHost.Transports.Zephyr;

namespace PtHost.Testing;

/// <summary>A running <c>pthost relay zephyr --listen 127.0.0.1:0</c> and the address from its LISTEN line (spec/zephyr.md §5).</summary>
public sealed class ZephyrRelayProcess : IAsyncDisposable
{
    private ZephyrRelayProcess(PtProcess process, IPEndPoint endPoint)
    {
        Process = process;
        EndPoint = endPoint;
    }

    public PtProcess Process { get; }
    public IPEndPoint EndPoint { get; }

    public static Task<ZephyrRelayProcess> StartAsync(params string[] options) => StartAsync(null, options);

    /// <summary>With <paramref name="fdLimit"/>, the relay runs with that RLIMIT_NOFILE (soft and hard).</summary>
    public static Task<ZephyrRelayProcess> StartAsync(ulong? fdLimit, params string[] options)
    {
        string[] args = ["relay", "zephyr", "--listen", "127.0.0.1:0", "--loglevel", "debug", .. options];
        return ReadListenAsync(fdLimit is { } limit ? PtProcess.StartPthostWithFdLimit(limit, args) : PtProcess.StartPthost(args));
    }

    /// <summary>The relay inside <paramref name="ns"/>, listening on <paramref name="listen"/>.</summary>
    public static Task<ZephyrRelayProcess> StartInAsync(NetworkNamespace ns, string listen, params string[] options) =>
        ReadListenAsync(ns.Start(PtHostExecutable.Path, ["relay", "zephyr", "--listen", listen, "--loglevel", "debug", .. options]));

    private static async Task<ZephyrRelayProcess> ReadListenAsync(PtProcess process)
    {
        try
        {
            string line = await process.ReadLineAsync();
            Assert.StartsWith("LISTEN zephyr ", line, StringComparison.Ordinal);
            return new ZephyrRelayProcess(process, IPEndPoint.Parse(line["LISTEN zephyr ".Length..]));
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>A raw Zephyr peer: a socket to the relay and the zid it was assigned (spec/zephyr.md §4.1).</summary>
public sealed class ZephyrPeer(Socket socket, uint zid) : IDisposable
{
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    public Socket Socket { get; } = socket;
    public uint Zid { get; } = zid;

    public static async Task<ZephyrPeer> ConnectAsync(IPEndPoint relay)
    {
        var socket = await ConnectRawAsync(relay);
        try
        {
            var assignment = await ReadExactlyAsync(socket, ZephyrWire.MessageLength);
            Assert.Equal(BindRequestError.None, ZephyrWire.ParseAssignment(assignment, out uint zid));
            return new ZephyrPeer(socket, zid);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public Task BindAsync(uint peerZid) => SendAsync(ZephyrWire.BuildBindRequest(peerZid));

    public async Task SendAsync(byte[] data)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await Socket.SendAsync(data, SocketFlags.None, cts.Token);
    }

    public Task<byte[]> ReadExactlyAsync(int count) => ReadExactlyAsync(Socket, count);

    /// <summary>A TCP connection to the relay, nothing read yet.</summary>
    public static async Task<Socket> ConnectRawAsync(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var cts = new CancellationTokenSource(Wait);
            await socket.ConnectAsync(endPoint, cts.Token);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes (an <see cref="EndOfStreamException"/> if the relay closes first).</summary>
    public static async Task<byte[]> ReadExactlyAsync(Socket socket, int count)
    {
        var buffer = new byte[count];
        using var cts = new CancellationTokenSource(Wait);
        int got = 0;
        while (got < count)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, cts.Token);
            if (n == 0) throw new EndOfStreamException($"closed after {got} of {count} bytes");
            got += n;
        }
        return buffer;
    }

    public void Dispose() => Socket.Dispose();
}

/// <summary>A zephyr server and client pthost configured from <c>pthost generate-config zephyr</c> (spec/zephyr.md §7).</summary>
public static class ZephyrChain
{
    public static Task<JObject> GenerateAsync() => PtChain.GenerateConfigAsync("zephyr");

    public static async Task<PtChain> StartAsync(JToken relays, double? signalTimeout = null, bool relayMessages = true,
        Action<JObject>? editClient = null, Action<JObject>? editServer = null, ulong? fdLimit = null)
    {
        var generated = await GenerateAsync();
        var client = (JObject)generated["client"]!;
        var server = (JObject)generated["server"]!;
        // The server joins only the relays it is told about (§7.1): the same list as the client.
        if (relays is JArray)
        {
            client["relays"] = relays;
            server["relays"] = relays.DeepClone();
        }
        else
        {
            client["relay"] = relays;
            server["relay"] = relays.DeepClone();
        }
        if (signalTimeout is { } t)
        {
            client["signalTimeout"] = t;
            server["signalTimeout"] = t;
        }
        editClient?.Invoke(client);
        editServer?.Invoke(server);
        return await PtChain.StartAsync(PtChain.FreeServerOf("zephyr", server), _ => PtChain.ClientOf("zephyr", client), relayMessages, fdLimit);
    }
}
