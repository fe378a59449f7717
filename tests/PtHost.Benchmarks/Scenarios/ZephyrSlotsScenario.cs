using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Testing;
using PtHost.Transports.Zephyr;

namespace PtHost.Benchmarks;

/// <summary>
/// Issue 24, "Tests and figures": the Zephyr slot-holding attack. A relay with room for
/// <see cref="MaxConnections"/> connections, <see cref="PerSource"/> per source, runs in a network
/// namespace whose loopback owns 2001:db8:24::/48. An attacker connects from
/// <see cref="AttackAddresses"/> addresses of one IPv6 /64, binds the connections it gets into
/// pairs and keeps every pair busy (a byte per pair per second, so no idle limit applies). A
/// legitimate user in another /64 sets up bound pairs (connect, assignment, bind, one byte each
/// way) and streams through one pair; both figures with and without the attack in the same
/// repetition, and the relay's RSS while attacked. With per-/64 counting (spec/zephyr.md §4.6)
/// the attacker holds <see cref="PerSource"/> slots; without it, every slot.
/// </summary>
public sealed class ZephyrSlotsScenario : IScenario
{
    private const int MaxConnections = 2000, PerSource = 200, AttackAddresses = 2000, SetupPairs = 300;
    private static readonly IPAddress RelayAddress = IPAddress.Parse("2001:db8:24::1");

    public string Name => "zephyr-slots";
    public string Title => "Zephyr relay under a slot-holding attack";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var setupClean = new Figure { Key = "zephyr_slots_setup_clean", Label = "Legitimate pair set-ups per second, no attack", Unit = "pairs/s", Format = "0" };
        var setupAttacked = new Figure { Key = "zephyr_slots_setup_attacked", Label = "Legitimate pair set-ups per second, attacker holding slots", Unit = "pairs/s", Format = "0" };
        var setupRatio = new Figure { Key = "zephyr_slots_setup_ratio", Label = "ratio attacked / no attack", Unit = "", Format = "0.00", Goal = Goal.AtLeast, Target = 0.5, Indent = 1 };
        var streamClean = new Figure { Key = "zephyr_slots_stream_clean", Label = "Legitimate stream through a bound pair, no attack", Unit = "Gbit/s" };
        var streamAttacked = new Figure { Key = "zephyr_slots_stream_attacked", Label = "Legitimate stream through a bound pair, attacker holding slots", Unit = "Gbit/s" };
        var streamRatio = new Figure { Key = "zephyr_slots_stream_ratio", Label = "ratio attacked / no attack", Unit = "", Format = "0.00", Goal = Goal.AtLeast, Target = 0.5, Indent = 1 };
        var held = new Figure { Key = "zephyr_slots_attacker_held", Label = $"connections the attacker holds ({AttackAddresses} addresses of one /64, relay max {MaxConnections}, {PerSource} per source)", Unit = "", Format = "0", Indent = 1 };
        var rss = new Figure { Key = "zephyr_slots_relay_rss", Label = "relay RSS under attack", Unit = "MiB", Format = "0", Goal = Goal.AtMost, Target = 512, Indent = 1 };
        run.Add(setupClean, setupAttacked, setupRatio, streamClean, streamAttacked, streamRatio, held, rss);
        var raw = run.Raw("zephyr_slots");
        long streamBytes = Math.Min(ctx.StreamBytes, 1L << 30);

        await using var ns = await NetworkNamespace.CreateAsync("zslots").ConfigureAwait(false);
        await ns.IpAsync("-6", "addr", "add", RelayAddress + "/128", "dev", "lo", "nodad").ConfigureAwait(false);
        await ns.IpAsync("-6", "route", "add", "local", "2001:db8:24::/48", "dev", "lo").ConfigureAwait(false);
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"zephyr slots {rep + 1}/{ctx.Repetitions}: relay max {MaxConnections}, {PerSource} per source");
            await using var relay = await ZephyrRelayChild.StartInAsync(ns.Name, ctx.PtHost, $"[{RelayAddress}]:0",
                ["--max-connections", $"{MaxConnections}", "--max-per-source", $"{PerSource}"]).ConfigureAwait(false);
            var ep = relay.EndPoint;
            // Warm-up (JIT, pools, splice pipes) on both sides, so that the first measurement is not the cold one.
            await SetupRateAsync(ns, ep).ConfigureAwait(false);
            await StreamAsync(ns, ep, 64L << 20).ConfigureAwait(false);
            double s0 = await ScenarioRun.AttemptAsync(setupClean, () => SetupRateAsync(ns, ep)).ConfigureAwait(false);
            double t0 = await ScenarioRun.AttemptAsync(streamClean, () => StreamAsync(ns, ep, streamBytes)).ConfigureAwait(false);

            ctx.Say($"zephyr slots {rep + 1}/{ctx.Repetitions}: attacker connects from {AttackAddresses} addresses of 2001:db8:24:1::/64");
            await using var attack = await Attack.StartAsync(ns, ep).ConfigureAwait(false);
            held.Samples.Add(attack.Held);
            double s1 = await ScenarioRun.AttemptAsync(setupAttacked, () => SetupRateAsync(ns, ep)).ConfigureAwait(false);
            double t1 = await ScenarioRun.AttemptAsync(streamAttacked, () => StreamAsync(ns, ep, streamBytes)).ConfigureAwait(false);
            long rssKiB = Sys.StatusKiB(relay.Child.Pid, "VmRSS");
            rss.Samples.Add(rssKiB / 1024.0);
            ScenarioRun.AddRatio(setupRatio, s1, s0, setupAttacked, setupClean);
            ScenarioRun.AddRatio(streamRatio, t1, t0, streamAttacked, streamClean);
            raw.Add(ScenarioRun.Tag(new JsonObject
            {
                ["setup_clean"] = s0, ["setup_attacked"] = s1, ["stream_clean_gbps"] = t0, ["stream_attacked_gbps"] = t1,
                ["attacker_held"] = attack.Held, ["relay_rss_kib"] = rssKiB,
            }, "zephyr_slots", rep));
        }
    }

    /// <summary>Legitimate pairs from 2001:db8:24:2::/64, one after another; a pair refused by the relay counts as none.</summary>
    private static async Task<double> SetupRateAsync(NetworkNamespace ns, IPEndPoint relay)
    {
        var clock = Stopwatch.StartNew();
        int done = 0;
        for (int i = 0; i < SetupPairs; i++)
        {
            var (a, b) = await PairAsync(ns, relay, "2001:db8:24:2::1", "2001:db8:24:2::2").ConfigureAwait(false);
            if (a is null || b is null) continue;
            using (a)
            using (b)
            {
                await a.SendAsync(new byte[] { 1 }, SocketFlags.None).ConfigureAwait(false);
                await ReadExactlyAsync(b, 1).ConfigureAwait(false);
                await b.SendAsync(new byte[] { 2 }, SocketFlags.None).ConfigureAwait(false);
                await ReadExactlyAsync(a, 1).ConfigureAwait(false);
                done++;
            }
        }
        return done / clock.Elapsed.TotalSeconds;
    }

    /// <summary>One legitimate pair carrying <paramref name="bytes"/> one way; 0 when the relay refuses the pair.</summary>
    private static async Task<double> StreamAsync(NetworkNamespace ns, IPEndPoint relay, long bytes)
    {
        var (a, b) = await PairAsync(ns, relay, "2001:db8:24:2::3", "2001:db8:24:2::4").ConfigureAwait(false);
        if (a is null || b is null)
        {
            a?.Dispose();
            b?.Dispose();
            return 0;
        }
        using (a)
        using (b)
        {
            var clock = Stopwatch.StartNew();
            var send = Task.Factory.StartNew(() =>
            {
                var chunk = new byte[128 * 1024];
                for (long left = bytes; left > 0; left -= chunk.Length) a.Send(chunk, (int)Math.Min(chunk.Length, left), SocketFlags.None);
            }, TaskCreationOptions.LongRunning);
            var receive = Task.Factory.StartNew(() =>
            {
                var buffer = new byte[256 * 1024];
                long got = 0;
                while (got < bytes)
                {
                    int n = b.Receive(buffer);
                    if (n == 0) throw new IOException($"the pair ended after {got} of {bytes} bytes");
                    got += n;
                }
            }, TaskCreationOptions.LongRunning);
            await Task.WhenAll(send, receive).WaitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false);
            return bytes * 8 / clock.Elapsed.TotalSeconds / 1e9;
        }
    }

    /// <summary>Two connections from the given sources, bound to each other; nulls for those the relay refused.</summary>
    private static async Task<(Socket? A, Socket? B)> PairAsync(NetworkNamespace ns, IPEndPoint relay, string sourceA, string sourceB)
    {
        var sockets = ns.TcpSocketsFrom([IPAddress.Parse(sourceA), IPAddress.Parse(sourceB)]);
        var zids = await Task.WhenAll(sockets.Select(s => AssignmentAsync(s, relay))).ConfigureAwait(false);
        if (zids[0] is not { } za || zids[1] is not { } zb)
        {
            foreach (var s in sockets) s.Dispose();
            return (null, null);
        }
        await sockets[0].SendAsync(ZephyrWire.BuildBindRequest(zb), SocketFlags.None).ConfigureAwait(false);
        await sockets[1].SendAsync(ZephyrWire.BuildBindRequest(za), SocketFlags.None).ConfigureAwait(false);
        return (sockets[0], sockets[1]);
    }

    /// <summary>Connects and reads the assignment: the zid, or null when the relay closed the connection first (a limit).</summary>
    private static async Task<uint?> AssignmentAsync(Socket s, IPEndPoint relay)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await s.ConnectAsync(relay, cts.Token).ConfigureAwait(false);
        try
        {
            var message = await ReadExactlyAsync(s, ZephyrWire.MessageLength, cts.Token).ConfigureAwait(false);
            return ZephyrWire.ParseAssignment(message, out uint zid) == BindRequestError.None ? zid : null;
        }
        catch (Exception e) when (e is IOException or SocketException) { return null; }
    }

    private static async Task<byte[]> ReadExactlyAsync(Socket s, int count, CancellationToken ct = default)
    {
        var buffer = new byte[count];
        int got = 0;
        while (got < count)
        {
            int n = await s.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0) throw new IOException($"closed after {got} of {count} bytes");
            got += n;
        }
        return buffer;
    }

    /// <summary>The attacker: every connection it can get from one /64, bound in pairs, each pair kept busy.</summary>
    private sealed class Attack : IAsyncDisposable
    {
        private readonly List<Socket> _sockets;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _trickle;

        private Attack(List<Socket> sockets, List<Socket> senders, int held)
        {
            _sockets = sockets;
            Held = held;
            _trickle = Task.Run(async () =>
            {
                var one = new byte[1];
                while (!_stop.IsCancellationRequested)
                {
                    foreach (var s in senders)
                    {
                        try { await s.SendAsync(one, SocketFlags.None).ConfigureAwait(false); }
                        catch (SocketException) { }
                    }
                    try { await Task.Delay(1000, _stop.Token).ConfigureAwait(false); }
                    catch (OperationCanceledException) { return; }
                }
            });
        }

        public int Held { get; }

        public static async Task<Attack> StartAsync(NetworkNamespace ns, IPEndPoint relay)
        {
            var sockets = ns.TcpSocketsFrom(Enumerable.Range(1, AttackAddresses).Select(i => IPAddress.Parse($"2001:db8:24:1::{i:x}")));
            var zids = new uint?[sockets.Count];
            int next = -1;
            async Task Worker()
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < sockets.Count) zids[i] = await AssignmentAsync(sockets[i], relay).ConfigureAwait(false);
            }
            await Task.WhenAll(Enumerable.Range(0, 64).Select(_ => Task.Run(Worker))).ConfigureAwait(false);
            var assigned = Enumerable.Range(0, sockets.Count).Where(i => zids[i] is not null).ToList();
            var senders = new List<Socket>();
            for (int k = 0; k + 1 < assigned.Count; k += 2)
            {
                int a = assigned[k], b = assigned[k + 1];
                await sockets[a].SendAsync(ZephyrWire.BuildBindRequest(zids[b]!.Value), SocketFlags.None).ConfigureAwait(false);
                await sockets[b].SendAsync(ZephyrWire.BuildBindRequest(zids[a]!.Value), SocketFlags.None).ConfigureAwait(false);
                senders.Add(sockets[a]);
            }
            return new Attack(sockets, senders, assigned.Count);
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync().ConfigureAwait(false);
            await _trickle.ConfigureAwait(false);
            foreach (var s in _sockets) s.Dispose();
            _stop.Dispose();
        }
    }
}
