using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Testing;

// Where ports come from in the tests (issue 15): a socket bound to port 0 that the test keeps and
// passes on, the port a process reports (CMETHOD/SMETHOD, a relay's LISTEN line), or, for a program
// that prints nothing, the port it really bound, read from /proc (ProcessSockets). Never a port
// found free, closed, and handed to someone else: between the close and the reuse any other program
// may take it. Programs that must be told a port before they start use PresetPort.

/// <summary>
/// A loopback TCP port that refuses connections: a socket bound to it that never listens, held for
/// the test (the kernel answers every SYN with a reset, and no other program can take the port meanwhile).
/// </summary>
public sealed class RefusingPort : IDisposable
{
    private readonly Socket _socket;

    public RefusingPort(IPAddress? address = null)
    {
        address ??= IPAddress.Loopback;
        _socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _socket.Bind(new IPEndPoint(address, 0));
        EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
    }

    public IPEndPoint EndPoint { get; }
    public int Port => EndPoint.Port;

    public void Dispose() => _socket.Dispose();
}

/// <summary>The sockets a process holds, read from /proc: where a program that prints no address really listens.</summary>
public static class ProcessSockets
{
    /// <summary>The local addresses of the process's listening TCP sockets.</summary>
    public static List<IPEndPoint> TcpListeners(int pid) => Sockets(pid, ["tcp", "tcp6"], state: "0A");

    /// <summary>The local addresses of the process's UDP sockets.</summary>
    public static List<IPEndPoint> UdpSockets(int pid) => Sockets(pid, ["udp", "udp6"], state: null);

    /// <summary>
    /// Waits until the process listens on TCP (on <paramref name="port"/> when given) and returns the first such
    /// address; null if the process exits or <paramref name="within"/> passes first.
    /// </summary>
    public static Task<IPEndPoint?> WaitTcpListenerAsync(int pid, TimeSpan within, int? port = null) =>
        WaitAsync(pid, () => TcpListeners(pid), port, within);

    /// <summary>Waits until the process has a UDP socket (on <paramref name="port"/> when given); null if it exits or <paramref name="within"/> passes first.</summary>
    public static Task<IPEndPoint?> WaitUdpSocketAsync(int pid, TimeSpan within, int? port = null) =>
        WaitAsync(pid, () => UdpSockets(pid), port, within);

    /// <summary>
    /// Bytes that arrived on the TCP connection <paramref name="local"/> ↔ <paramref name="remote"/> (seen from the
    /// side that owns <paramref name="local"/>, in this test's network namespace) and that its process has not read
    /// yet; null when there is no such connection. 0 after a send: the peer process has read everything.
    /// </summary>
    public static long? ReceiveQueue(IPEndPoint local, IPEndPoint remote)
    {
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 5 || !Same(ParseProcAddress(f[1]), local) || !Same(ParseProcAddress(f[2]), remote)) continue;
                // tx_queue:rx_queue, in hex.
                return long.Parse(f[4][(f[4].IndexOf(':') + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            }
        return null;

        static bool Same(IPEndPoint a, IPEndPoint b) =>
            a.Port == b.Port && (a.Address.Equals(b.Address) || (a.Address.IsIPv4MappedToIPv6 ? a.Address.MapToIPv4() : a.Address).Equals(b.Address.IsIPv4MappedToIPv6 ? b.Address.MapToIPv4() : b.Address));
    }

    private static async Task<IPEndPoint?> WaitAsync(int pid, Func<List<IPEndPoint>> read, int? port, TimeSpan within)
    {
        IPEndPoint? found = null;
        await Eventually.HoldsWithinAsync(() =>
        {
            if (!Directory.Exists($"/proc/{pid}/fd")) return true; // gone: no address will come
            try { found = read().FirstOrDefault(e => port is null || e.Port == port); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return true; }
            return found is not null;
        }, within).ConfigureAwait(false);
        return found;
    }

    private static List<IPEndPoint> Sockets(int pid, string[] tables, string? state)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var fd in Directory.GetFileSystemEntries($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } t && t.StartsWith("socket:[", StringComparison.Ordinal)) inodes.Add(t[8..^1]);
            }
            catch (IOException) { } // closed while we looked
        }
        var result = new List<IPEndPoint>();
        foreach (var table in tables)
        {
            // The tables of the process's own network namespace.
            string path = $"/proc/{pid}/net/{table}";
            if (!File.Exists(path)) continue;
            foreach (var line in File.ReadLines(path).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 10 || !inodes.Contains(f[9]) || (state is not null && f[3] != state)) continue;
                result.Add(ParseProcAddress(f[1]));
            }
        }
        return result;
    }

    /// <summary>An address of /proc/net/tcp: the IP as 32-bit words in host (little-endian) order, then the port in hex.</summary>
    internal static IPEndPoint ParseProcAddress(string field)
    {
        var (ip, port) = (field[..field.IndexOf(':')], int.Parse(field[(field.IndexOf(':') + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        var bytes = new byte[ip.Length / 2];
        for (int word = 0; word < bytes.Length / 4; word++)
            for (int b = 0; b < 4; b++)
                bytes[word * 4 + b] = byte.Parse(ip.AsSpan(word * 8 + (3 - b) * 2, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        return new IPEndPoint(new IPAddress(bytes), port);
    }
}

/// <summary>
/// Ports for programs that must be told their port before they start and cannot bind port 0 (danted,
/// tinyproxy, iperf3, turnutils_peer, which echoes on a port and the next). A candidate is drawn at random
/// below the kernel's ephemeral range, so no socket bound to port 0 anywhere is ever given it; if another
/// program holds it anyway, the program fails to bind (EADDRINUSE) and the start is retried with a fresh
/// candidate. Whether the program came up on its port is checked on the program itself (its own sockets in
/// /proc, or its own report), never by connecting: a foreign listener would answer too.
/// </summary>
public static class PresetPort
{
    private const int Lowest = 10_000;

    /// <summary>The first port of the kernel's ephemeral range (ports handed out for port 0).</summary>
    public static int EphemeralLow { get; } = ReadEphemeralLow();

    /// <summary>A port P with P .. P + <paramref name="span"/> − 1 below the ephemeral range.</summary>
    public static int Candidate(int span = 1) => Random.Shared.Next(Lowest, EphemeralLow - span + 1);

    /// <summary>
    /// Calls <paramref name="tryStart"/> with fresh candidates until it returns a started program (it returns
    /// null, having stopped what it started, when the program did not come up on the port); at most
    /// <paramref name="attempts"/> tries, then an <see cref="InvalidOperationException"/>.
    /// </summary>
    public static async Task<T> StartAsync<T>(Func<int, Task<T?>> tryStart, string what, int span = 1, int attempts = 5) where T : class
    {
        for (int attempt = 1; ; attempt++)
        {
            int port = Candidate(span);
            if (await tryStart(port).ConfigureAwait(false) is { } started) return started;
            if (attempt == attempts) throw new InvalidOperationException($"{what} did not come up on any of {attempts} candidate ports (last {port})");
        }
    }

    private static int ReadEphemeralLow()
    {
        try
        {
            var text = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            return int.Parse(text[0], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException) { return 32768; }
    }
}
