using System.Net;
using System.Net.Sockets;
using PtHost.Contract;
using PtHost.Transports.Rud;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// The real rud server process under attack (a free server, allow 127.0.0.1, with a client pthost for the
/// legitimate sessions), and what an attacker needs: the server's public key from the SMETHOD line (the
/// bridge line publishes it) and in-process RUD endpoints from other loopback addresses.
/// </summary>
internal sealed class RudTarget : IAsyncDisposable
{
    private readonly List<RudEndpoint> _endpoints = [];

    private RudTarget(PtChain chain, byte[] serverKey)
    {
        Chain = chain;
        ServerKey = serverKey;
    }

    public PtChain Chain { get; }
    public byte[] ServerKey { get; }
    public IPEndPoint Server => Chain.ServerEndPoint;
    public int Pid => Chain.Server.Pid;

    public static async Task<RudTarget> StartAsync(Action<Newtonsoft.Json.Linq.JObject>? editServer = null, Action<Newtonsoft.Json.Linq.JObject>? editClient = null)
    {
        // The attacks are a key holder's: the server takes any initiator (no authorizedKeys, spec/rud.md §5.5).
        var chain = await RudChain.StartAsync(editClient: editClient, editServer: o =>
        {
            o.Remove("authorizedKeys");
            editServer?.Invoke(o);
        });
        return new RudTarget(chain, RudChain.ServerKey(chain));
    }

    /// <summary>An initiator endpoint bound to <paramref name="source"/> (another loopback address: another source prefix).</summary>
    public RudEndpoint Endpoint(IPAddress source, RudEndpointOptions? options = null)
    {
        var ep = RudEndpoint.Bind(new IPEndPoint(source, 0), options ?? new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(5) });
        _endpoints.Add(ep);
        return ep;
    }

    /// <summary>A connection to the server from <paramref name="source"/>: what any holder of the bridge line can make.</summary>
    public async Task<RudConnection> ConnectAsync(IPAddress source, CancellationToken ct = default) =>
        await Endpoint(source).ConnectAsync(Server, ServerKey, ct);

    /// <summary>A session on a new stream of <paramref name="conn"/> to 127.0.0.1:<paramref name="port"/> (the session preamble, spec/session.md §2).</summary>
    public static async Task<RudStream> SessionAsync(RudConnection conn, int port, CancellationToken ct = default)
    {
        var s = conn.OpenStream();
        await SessionPreamble.RequestAsync(s, new Destination("127.0.0.1", port), "rud server", ct);
        return s;
    }

    /// <summary>CPU seconds (user + system) the process has used, from /proc/PID/stat.</summary>
    public static double CpuSeconds(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // Fields 14 and 15 (utime, stime) in clock ticks; after the ')' the list starts at field 3.
        long ticks = long.Parse(f[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(f[12], System.Globalization.CultureInfo.InvariantCulture);
        return ticks / 100.0;
    }

    /// <summary>Waits until the process's CPU time stops growing (it has handled what was sent); returns it.</summary>
    public async Task<double> CpuAtRestAsync(TimeSpan within)
    {
        long Centis() => (long)Math.Round(CpuSeconds(Pid) * 100);
        return await Eventually.StableAsync(Centis, TimeSpan.FromSeconds(1), within, "the rud server's CPU time") / 100.0;
    }

    /// <summary>A UDP socket on <paramref name="address"/> that counts what arrives (a victim of reflected traffic).</summary>
    public static (Socket Socket, Func<(int Datagrams, long Bytes)> Counts, Task Loop) Listener(IPAddress address, CancellationToken ct)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        s.Bind(new IPEndPoint(address, 0));
        int datagrams = 0;
        long bytes = 0;
        var loop = Task.Run(async () =>
        {
            var buf = new byte[2048];
            try
            {
                while (true)
                {
                    int n = await s.ReceiveAsync(buf, SocketFlags.None, ct);
                    Interlocked.Increment(ref datagrams);
                    Interlocked.Add(ref bytes, n);
                }
            }
            catch (OperationCanceledException) { }
            catch (ObjectDisposedException) { }
            catch (SocketException) { }
        });
        return (s, () => (Volatile.Read(ref datagrams), Interlocked.Read(ref bytes)), loop);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var ep in _endpoints)
        {
            try { await ep.DisposeAsync(); } catch (Exception) { }
        }
        await Chain.DisposeAsync();
    }
}
