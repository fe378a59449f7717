using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using PtHost.Contract;
using PtHost.Turn;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// The TURN scenario (spec/turn.md): UDP datagrams per second and loss through a TURN allocation
/// carried by plain, against iperf3 UDP direct on loopback; round-trip latency of small datagrams
/// through TURN + plain against a direct UDP echo.
/// </summary>
public static class TurnBench
{
    private const int DatagramBytes = 1200, PingBytes = 64, Pings = 2000;
    private const string Realm = "bench", User = "bench", Password = "bench";

    public static async Task RunAsync(Context ctx, List<Figure> figures, JsonObject details)
    {
        var direct = new Figure { Key = "udp_direct_datagrams_per_second", Label = $"UDP {DatagramBytes} B datagrams/s received, iperf3 -u -b 0 direct (reference)", Unit = "dgram/s", Format = "0" };
        var directLoss = new Figure { Key = "udp_direct_loss_percent", Label = "loss", Unit = "%", Format = "0.0", Indent = 1 };
        var directPacedLoss = new Figure { Key = "udp_direct_paced_loss_percent", Label = "iperf3 direct, paced (-b) at 90 % of its unpaced rate: loss", Unit = "%", Format = "0.00", Indent = 1 };
        var turn = new Figure { Key = "turn_plain_datagrams_per_second", Label = $"UDP {DatagramBytes} B datagrams/s received, TURN channel + plain, unpaced sender", Unit = "dgram/s", Format = "0" };
        var turnLoss = new Figure { Key = "turn_plain_loss_percent", Label = "loss", Unit = "%", Format = "0.0", Indent = 1, Goal = Goal.AtMost, Target = 5 };
        var ratio = new Figure { Key = "turn_plain_ratio", Label = "ratio to direct (received datagrams/s)", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.5 };
        var paced = new Figure { Key = "turn_plain_paced_datagrams_per_second", Label = "TURN channel + plain, sender paced at 90 % of the unpaced rate received", Unit = "dgram/s", Format = "0" };
        var pacedLoss = new Figure { Key = "turn_plain_paced_loss_percent", Label = "loss", Unit = "%", Format = "0.00", Indent = 1, Goal = Goal.AtMost, Target = 1 };
        var directP50 = new Figure { Key = "udp_direct_rtt_p50_ms", Label = $"RTT {PingBytes} B, direct UDP echo, p50", Unit = "ms", Format = "0.000" };
        var directP99 = new Figure { Key = "udp_direct_rtt_p99_ms", Label = "p99", Unit = "ms", Format = "0.000", Indent = 1 };
        var turnP50 = new Figure { Key = "turn_plain_rtt_p50_ms", Label = $"RTT {PingBytes} B, TURN channel + plain, p50", Unit = "ms", Format = "0.000" };
        var turnP99 = new Figure { Key = "turn_plain_rtt_p99_ms", Label = "p99", Unit = "ms", Format = "0.000", Indent = 1 };
        var rttRatio = new Figure { Key = "turn_plain_rtt_p50_ratio", Label = "p50 ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtMost, Target = 2 };
        figures.AddRange([direct, directLoss, directPacedLoss, turn, turnLoss, ratio, paced, pacedLoss, directP50, directP99, turnP50, turnP99, rttRatio]);
        var raw = new JsonArray();
        details["turn"] = raw;
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3")], ctx.Say).ConfigureAwait(false);
            string iperf3 = Sys.Which("iperf3")!;
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                ctx.Say($"turn {rep + 1}/{ctx.Repetitions}: iperf3 UDP direct");
                var (d, dLoss, dRaw) = await IperfUdpAsync(iperf3, ctx.IperfSeconds, 0).ConfigureAwait(false);
                direct.Samples.Add(d);
                directLoss.Samples.Add(dLoss);
                dRaw["kind"] = "iperf3_udp_direct";
                dRaw["rep"] = rep;
                raw.Add(dRaw);
                // The reference's own honest figure: what iperf3 loses when it does not overrun its receiver.
                var (_, dpLoss, dpRaw) = await IperfUdpAsync(iperf3, ctx.IperfSeconds, (long)(0.9 * d * DatagramBytes * 8)).ConfigureAwait(false);
                directPacedLoss.Samples.Add(dpLoss);
                dpRaw["kind"] = "iperf3_udp_direct_paced";
                dpRaw["rep"] = rep;
                raw.Add(dpRaw);

                ctx.Say($"turn {rep + 1}/{ctx.Repetitions}: TURN + plain flood and ping");
                await using var chain = await TurnChain.StartAsync(ctx).ConfigureAwait(false);
                var (t, tLoss, tRaw) = await FloodAsync(chain, ctx.IperfSeconds, null).ConfigureAwait(false);
                turn.Samples.Add(t);
                turnLoss.Samples.Add(tLoss);
                if (d > 0) ratio.Samples.Add(t / d);
                tRaw["kind"] = "turn_plain_flood";
                tRaw["rep"] = rep;
                raw.Add(tRaw);

                ctx.Say($"turn {rep + 1}/{ctx.Repetitions}: TURN + plain paced at {0.9 * t:0} datagrams/s");
                var (p, pLoss, pRaw) = await FloodAsync(chain, ctx.IperfSeconds, 0.9 * t).ConfigureAwait(false);
                paced.Samples.Add(p);
                pacedLoss.Samples.Add(pLoss);
                pRaw["kind"] = "turn_plain_paced";
                pRaw["rep"] = rep;
                raw.Add(pRaw);

                var (dp50, dp99, _) = await PingAsync(null).ConfigureAwait(false);
                directP50.Samples.Add(dp50);
                directP99.Samples.Add(dp99);
                var (tp50, tp99, lost) = await PingAsync(chain).ConfigureAwait(false);
                turnP50.Samples.Add(tp50);
                turnP99.Samples.Add(tp99);
                if (dp50 > 0) rttRatio.Samples.Add(tp50 / dp50);
                if (lost > 0) turnP50.Note = $"{lost} of {Pings} pings unanswered within 1 s";
            }
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or SocketException or FormatException)
        {
            ctx.Say("turn: " + e.Message);
            foreach (var f in new[] { direct, directLoss, directPacedLoss, turn, turnLoss, ratio, paced, pacedLoss, directP50, directP99, turnP50, turnP99, rttRatio })
                if (f.Samples.Count == 0) f.Error ??= e.Message;
        }
    }

    /// <summary>iperf3 UDP at <paramref name="bitsPerSecond"/> (0: unlimited): datagrams/s the receiver got, and the loss it reported.</summary>
    private static async Task<(double PerSecond, double LossPercent, JsonObject Raw)> IperfUdpAsync(string iperf3, int seconds, long bitsPerSecond)
    {
        await using var server = await Iperf3Server.StartAsync(iperf3).ConfigureAwait(false);
        var r = await Child.RunAsync(iperf3, ["-c", "127.0.0.1", "-p", server.Port.ToString(CultureInfo.InvariantCulture), "-u", "-b", bitsPerSecond.ToString(CultureInfo.InvariantCulture),
            "-l", DatagramBytes.ToString(CultureInfo.InvariantCulture), "-t", seconds.ToString(CultureInfo.InvariantCulture), "-J"], TimeSpan.FromSeconds(seconds + 40)).ConfigureAwait(false);
        var json = JsonNode.Parse(r.Stdout)?.AsObject() ?? throw new FormatException("iperf3 printed no JSON");
        if (json["error"] is { } err) throw new InvalidOperationException($"iperf3: {err}");
        var sum = json["end"]?["sum"] ?? throw new InvalidOperationException("iperf3 JSON has no end.sum");
        double packets = sum["packets"]!.GetValue<double>(), lost = sum["lost_packets"]!.GetValue<double>(), secs = sum["seconds"]!.GetValue<double>();
        await server.FinishAsync().ConfigureAwait(false);
        return ((packets - lost) / secs, packets > 0 ? lost / packets * 100 : 0,
            new JsonObject { ["packets"] = packets, ["lost_packets"] = lost, ["seconds"] = secs, ["bits_per_second_asked"] = bitsPerSecond });
    }

    /// <summary>
    /// Sends ChannelData of <see cref="DatagramBytes"/> from one thread for <paramref name="seconds"/>, as
    /// fast as it can or at <paramref name="rate"/> datagrams/s; counts what a sink behind the server
    /// process gets. Then reads where the lost ones died, stage by stage: the kernel's drop counters
    /// of the TURN listener's socket (client process), the server process's UDP socket and the sink
    /// (/proc/net/udp), and the counters both processes log when the allocation is deleted
    /// (association queue, frames too large, datagrams the server's socket refused).
    /// </summary>
    private static async Task<(double PerSecond, double LossPercent, JsonObject Raw)> FloodAsync(TurnChain chain, int seconds, double? rate)
    {
        using var sink = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveBufferSize = 8 << 20 };
        sink.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int sinkPort = ((IPEndPoint)sink.LocalEndPoint!).Port;
        long received = 0;
        using var stop = new CancellationTokenSource();
        // The sink reads a batch per recvmmsg(2), so its own socket is not where the path loses datagrams.
        var counter = Task.Run(async () =>
        {
            var batch = new PtHost.Net.Udp.DatagramBatchReceiver(64, 2048);
            try
            {
                while (true) Interlocked.Add(ref received, await batch.ReceiveAsync(sink, stop.Token).ConfigureAwait(false));
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        });
        await using var client = await TurnClient.AllocateAsync(chain.Turn).ConfigureAwait(false);
        await client.BindAsync(0x4000, (IPEndPoint)sink.LocalEndPoint!).ConfigureAwait(false);
        byte[] frame = new byte[4 + DatagramBytes];
        BinaryPrimitives.WriteUInt16BigEndian(frame, 0x4000);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(2), DatagramBytes);
        long sent = 0, sendErrors = 0;
        var listenerDropsBefore = UdpDrops(chain.Client.Pid, chain.Turn.Port);
        double cpuBefore = Sys.CpuSeconds(chain.Client.Pid) + Sys.CpuSeconds(chain.Server.Pid);
        var sw = Stopwatch.StartNew();
        await Task.Run(() =>
        {
            while (true)
            {
                double now = sw.Elapsed.TotalSeconds;
                if (now >= seconds) break;
                if (rate is { } r && sent >= r * now)
                {
                    Thread.Sleep(1); // ahead of the pace: bursts of at most about a millisecond's worth
                    continue;
                }
                try { client.Socket.Send(frame); sent++; }
                catch (SocketException) { sendErrors++; }
            }
        }).ConfigureAwait(false);
        double elapsed = sw.Elapsed.TotalSeconds;
        // Let what is in flight arrive: until the count stops growing for 500 ms (at most 10 s).
        await Eventually.StableAsync(() => Interlocked.Read(ref received), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(10), "datagrams arriving at the sink").ConfigureAwait(false);
        double cpu = Sys.CpuSeconds(chain.Client.Pid) + Sys.CpuSeconds(chain.Server.Pid) - cpuBefore;
        var stages = new JsonObject
        {
            ["listener_socket_kernel_drops"] = UdpDrops(chain.Client.Pid, chain.Turn.Port) - listenerDropsBefore,
            ["server_udp_sockets_kernel_drops"] = UdpDrops(chain.Server.Pid, null),
            ["sink_socket_kernel_drops"] = UdpDrops(Environment.ProcessId, sinkPort),
        };
        stop.Cancel();
        await counter.ConfigureAwait(false);
        long got = Interlocked.Read(ref received);
        // Deleting the allocation makes both processes log their counters for it.
        int clientLines = chain.Client.StderrLines, serverLines = chain.Server.StderrLines;
        await client.DeleteAsync().ConfigureAwait(false);
        try
        {
            var allocation = await WaitForCountsAsync(chain.Client, clientLines, AllocationCounts).ConfigureAwait(false);
            stages["client_queued_to_transport"] = long.Parse(allocation.Groups[1].Value, CultureInfo.InvariantCulture);
            stages["client_association_queue_drops"] = long.Parse(allocation.Groups[2].Value, CultureInfo.InvariantCulture);
            stages["client_frame_too_large_drops"] = long.Parse(allocation.Groups[3].Value, CultureInfo.InvariantCulture);
            var association = await WaitForCountsAsync(chain.Server, serverLines, AssociationCounts).ConfigureAwait(false);
            stages["server_sent_to_peers"] = long.Parse(association.Groups[1].Value, CultureInfo.InvariantCulture);
            stages["server_socket_refused"] = long.Parse(association.Groups[2].Value, CultureInfo.InvariantCulture);
            stages["server_refused_peer_drops"] = long.Parse(association.Groups[3].Value, CultureInfo.InvariantCulture);
        }
        catch (TimeoutException e)
        {
            stages["error"] = e.Message;
        }
        return (got / elapsed, sent > 0 ? (sent - got) * 100.0 / sent : 0,
            new JsonObject
            {
                ["sent"] = sent, ["send_errors"] = sendErrors, ["received"] = got, ["seconds"] = elapsed, ["pthost_cpu_seconds"] = cpu,
                ["paced_rate"] = rate, ["drops_per_stage"] = stages,
            });
    }

    // The lines TurnLog.AllocationCounts (client) and SessionLog.AssociationCounts (server) print.
    private static readonly Regex AllocationCounts = new(@"TURN allocation \d+ ended: (\d+) datagrams queued to the transport, (\d+) dropped at the association queue, (\d+) too large", RegexOptions.CultureInvariant);
    private static readonly Regex AssociationCounts = new(@"UDP association \d+ ended: (\d+) datagrams sent to peers, (\d+) refused by the socket, (\d+) for refused peers", RegexOptions.CultureInvariant);

    private static async Task<Match> WaitForCountsAsync(Child child, int after, Regex pattern)
    {
        Match? found = null;
        await Eventually.TrueAsync(() => (found = child.StderrSince(after).Select(l => pattern.Match(l)).FirstOrDefault(m => m.Success)) is not null,
            $"{child.Name} logging its counters", TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        return found!;
    }

    /// <summary>
    /// The kernel's drop counter (the last column of /proc/net/udp and udp6) summed over the UDP
    /// sockets process <paramref name="pid"/> holds, or only the one bound to <paramref name="port"/>.
    /// </summary>
    private static long UdpDrops(int pid, int? port)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal)) inodes.Add(target[8..^1]);
            }
            catch (IOException) { } // closed meanwhile
        }
        long drops = 0;
        foreach (var table in new[] { $"/proc/{pid}/net/udp", $"/proc/{pid}/net/udp6" })
        {
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 13 || !inodes.Contains(f[9])) continue;
                if (port is { } p && int.Parse(f[1][(f[1].IndexOf(':', StringComparison.Ordinal) + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture) != p) continue;
                drops += long.Parse(f[12], CultureInfo.InvariantCulture);
            }
        }
        return drops;
    }

    /// <summary>One <see cref="PingBytes"/>-byte datagram at a time to an echo socket, directly or through a TURN channel; RTT percentiles in ms.</summary>
    private static async Task<(double P50, double P99, int Lost)> PingAsync(TurnChain? chain)
    {
        using var echo = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        echo.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        using var stop = new CancellationTokenSource();
        var echoLoop = Task.Run(async () =>
        {
            byte[] b = new byte[2048];
            try
            {
                while (true)
                {
                    var r = await echo.ReceiveFromAsync(b, new IPEndPoint(IPAddress.Any, 0), stop.Token).ConfigureAwait(false);
                    await echo.SendToAsync(b.AsMemory(0, r.ReceivedBytes), r.RemoteEndPoint, stop.Token).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        });
        TurnClient? client = null;
        Socket socket;
        byte[] message;
        if (chain is null)
        {
            socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            socket.Connect(echo.LocalEndPoint!);
            message = new byte[PingBytes];
        }
        else
        {
            client = await TurnClient.AllocateAsync(chain.Turn).ConfigureAwait(false);
            await client.BindAsync(0x4001, (IPEndPoint)echo.LocalEndPoint!).ConfigureAwait(false);
            socket = client.Socket;
            message = new byte[4 + PingBytes];
            BinaryPrimitives.WriteUInt16BigEndian(message, 0x4001);
            BinaryPrimitives.WriteUInt16BigEndian(message.AsSpan(2), PingBytes);
        }
        var rtts = new List<double>(Pings);
        int lost = 0;
        byte[] reply = new byte[2048];
        try
        {
            for (int i = 0; i < Pings; i++)
            {
                BinaryPrimitives.WriteInt32BigEndian(message.AsSpan(message.Length - 4), i);
                long start = Stopwatch.GetTimestamp();
                socket.Send(message);
                using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                try
                {
                    while (true)
                    {
                        int n = await socket.ReceiveAsync(reply, SocketFlags.None, limit.Token).ConfigureAwait(false);
                        if (n == message.Length && BinaryPrimitives.ReadInt32BigEndian(reply.AsSpan(n - 4)) == i) break;
                    }
                    rtts.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                }
                catch (OperationCanceledException) { lost++; }
            }
        }
        finally
        {
            if (client is not null) await client.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            stop.Cancel();
            await echoLoop.ConfigureAwait(false);
        }
        if (rtts.Count == 0) throw new TimeoutException("no ping was answered");
        return (Stats.Percentile(rtts, 50), Stats.Percentile(rtts, 99), lost);
    }

    /// <summary>A free plain server (allow 127.0.0.1) and a client with a TURN listener.</summary>
    private sealed class TurnChain : IAsyncDisposable
    {
        public required Child Server { get; init; }
        public required Child Client { get; init; }
        public required IPEndPoint Turn { get; init; }

        public static async Task<TurnChain> StartAsync(Context ctx)
        {
            string state = ctx.NewStateDir();
            var serverConfig = new JsonObject
            {
                ["role"] = "server", ["transports"] = new JsonArray("plain"), ["allow"] = new JsonArray("127.0.0.1"),
                ["state"] = Path.Combine(state, "server"), ["exit-on-stdin-close"] = true,
            };
            var server = Child.Start("pthost server", ctx.PtHost, [serverConfig.ToJsonString()]);
            try
            {
                var (_, line) = await server.WaitForLineAsync(l => l.StartsWith("SMETHOD plain ", StringComparison.Ordinal), PtHost.Benchmarks.Chain.StartTimeout).ConfigureAwait(false);
                var clientConfig = new JsonObject
                {
                    ["role"] = "client", ["transports"] = new JsonArray("plain"),
                    ["options"] = new JsonObject { ["plain"] = new JsonObject { ["serverAddress"] = line.Split(' ')[2] } },
                    ["turn"] = new JsonObject { ["realm"] = Realm, ["users"] = new JsonObject { [User] = Password } },
                    ["state"] = Path.Combine(state, "client"), ["exit-on-stdin-close"] = true,
                };
                var client = Child.Start("pthost client", ctx.PtHost, [clientConfig.ToJsonString()]);
                try
                {
                    var (_, turnLine) = await client.WaitForLineAsync(l => l.StartsWith("CMETHOD plain turn ", StringComparison.Ordinal), PtHost.Benchmarks.Chain.StartTimeout).ConfigureAwait(false);
                    return new TurnChain { Server = server, Client = client, Turn = IPEndPoint.Parse(turnLine.Split(' ')[3]) };
                }
                catch
                {
                    await client.DisposeAsync().ConfigureAwait(false);
                    throw;
                }
            }
            catch
            {
                await server.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await Client.DisposeAsync().ConfigureAwait(false);
            await Server.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The smallest TURN client the scenario needs: Allocate with long-term credentials, ChannelBind.</summary>
    private sealed class TurnClient : IAsyncDisposable
    {
        private static readonly byte[] Key = Stun.LongTermKey(User, Realm, Password);
        private string _nonce = "";

        private TurnClient(Socket socket) => Socket = socket;

        public Socket Socket { get; }

        public static async Task<TurnClient> AllocateAsync(IPEndPoint server)
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveBufferSize = 4 << 20, SendBufferSize = 4 << 20 };
            s.Connect(server);
            var c = new TurnClient(s);
            int code = await c.RequestAsync(StunMethod.Allocate, 0, default, signed: false).ConfigureAwait(false);
            if (code == 401) code = await c.RequestAsync(StunMethod.Allocate, 0, default, signed: true).ConfigureAwait(false);
            if (code != 0) throw new InvalidOperationException($"TURN Allocate failed with {code}");
            return c;
        }

        /// <summary>Refresh with LIFETIME 0: the server deletes the allocation (RFC 5766 §7.2).</summary>
        public async Task DeleteAsync()
        {
            int code = await RequestAsync(StunMethod.Refresh, 0, default, signed: true).ConfigureAwait(false);
            if (code != 0) throw new InvalidOperationException($"TURN Refresh (lifetime 0) failed with {code}");
        }

        public async Task BindAsync(ushort channel, IPEndPoint peer)
        {
            int code = await RequestAsync(StunMethod.ChannelBind, channel, PeerAddress.From(peer), signed: true).ConfigureAwait(false);
            if (code != 0) throw new InvalidOperationException($"TURN ChannelBind failed with {code}");
        }

        private async Task<int> RequestAsync(int method, ushort channel, PeerAddress peer, bool signed)
        {
            byte[] tid = System.Security.Cryptography.RandomNumberGenerator.GetBytes(12);
            byte[] buffer = new byte[512];
            int length = Build(buffer, method, tid, channel, peer, signed);
            byte[] reply = new byte[2048];
            for (int attempt = 0; attempt < 5; attempt++)
            {
                Socket.Send(buffer.AsSpan(0, length));
                using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                try
                {
                    while (true)
                    {
                        int n = await Socket.ReceiveAsync(reply, SocketFlags.None, limit.Token).ConfigureAwait(false);
                        var (ok, code, nonce) = Read(reply.AsSpan(0, n), tid);
                        if (!ok) continue;
                        if (nonce is not null) _nonce = nonce;
                        return code;
                    }
                }
                catch (OperationCanceledException) { }
            }
            throw new TimeoutException($"no answer to TURN method 0x{method:x3}");
        }

        private int Build(Span<byte> buffer, int method, byte[] tid, ushort channel, PeerAddress peer, bool signed)
        {
            var w = new StunWriter(buffer, method, StunClass.Request, tid);
            if (method == StunMethod.Allocate) w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24);
            if (method == StunMethod.Refresh) w.AddUInt32(StunAttribute.Lifetime, 0);
            if (method == StunMethod.ChannelBind)
            {
                w.AddUInt32(StunAttribute.ChannelNumber, (uint)channel << 16);
                w.AddXorAddress(StunAttribute.XorPeerAddress, peer);
            }
            if (signed)
            {
                w.AddString(StunAttribute.Username, User);
                w.AddString(StunAttribute.Realm, Realm);
                w.AddString(StunAttribute.Nonce, _nonce);
                w.AddIntegrity(Key);
            }
            return w.Length;
        }

        private static (bool Ok, int Code, string? Nonce) Read(ReadOnlySpan<byte> data, byte[] tid)
        {
            if (Stun.TryParse(data, out var m) != StunParseError.None || !m.TransactionId.SequenceEqual(tid)) return (false, 0, null);
            string? nonce = m.TryGet(StunAttribute.Nonce, out var n) ? System.Text.Encoding.ASCII.GetString(n) : null;
            int code = m.Class == StunClass.Success ? 0 : m.TryGet(StunAttribute.ErrorCode, out var e) ? e[2] * 100 + e[3] : 500;
            return (true, code, nonce);
        }

        public ValueTask DisposeAsync()
        {
            Socket.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
