using System.Globalization;
using PtHost.Transports.Rud;
using Xunit.Abstractions;

namespace PtHost.Tests.Unit.Rud;

/// <summary>
/// A small deterministic path for <see cref="Bbr"/> (spec/rud.md §9.3), in virtual microseconds: a sender
/// that sends 1350-byte packets within the window, paced like RudConnection (a token bucket of at most
/// max(10 packets, 2 ms at the pacing rate)); optional random loss on the way in; one bottleneck of
/// fixed rate with a FIFO of bounded length (tail drop); a one-way delay of half the base RTT each way;
/// a receiver that acknowledges like RudConnection (§9.1: every 2nd packet for the first 100, then
/// every 10th, at once on a gap, else after 10 ms); a sender that hands newly acknowledged packets to
/// <see cref="Bbr.OnAcked"/> largest first (the connection's order), declares a packet lost once a
/// packet 3 numbers later is acknowledged, and ends each acknowledgement with <see cref="Bbr.OnAckDone"/>.
/// No sockets, no real time.
/// </summary>
internal sealed class BbrPath
{
    public const int Mss = 1350;
    private const int AckEvery = 10, AckQuickPackets = 100;
    private const long MaxAckDelayUs = 10_000;

    private enum Kind { SenderWake, Arrive, AckArrive, AckTimer }

    private double _rate;                          // bottleneck, bytes per µs
    private readonly int _queueLimit;              // packets the bottleneck holds (waiting and in service)
    private readonly Random _random;
    private readonly PriorityQueue<(Kind Kind, long A, int Ack), (long Time, long Seq)> _events = new();
    private long _seq;

    // Sender.
    private readonly List<SentPacket> _sent = [];
    private long _inFlight, _firstUnsettled, _largestAcked = -1;
    private double _tokens = 10 * Mss;
    private long _tokensTime, _wakeAt = long.MaxValue;

    // Bottleneck.
    private readonly Queue<double> _departures = new();
    private double _busyUntil;

    // Receiver.
    private long _rxLargest = -1;
    private int _rxElicitingReceived, _rxUnacked;
    private long _ackDeadline;
    private readonly List<long> _rxPending = [];
    private readonly List<List<long>> _acks = [];  // acknowledgements on their way back, by index

    public BbrPath(double mbitPerSecond, long rttUs, int queueLimit, double randomLoss = 0, int seed = 1)
    {
        _rate = mbitPerSecond / 8;
        RttUs = rttUs;
        _queueLimit = queueLimit;
        RandomLoss = randomLoss;
        _random = new Random(seed);
        Bbr = new Bbr(Mss, AckEvery, 32, 10 * Mss, 333_000, 0);
        Schedule(0, Kind.SenderWake, 0);
    }

    public Bbr Bbr { get; }

    /// <summary>The base round-trip time (µs); may be changed while running (a route change).</summary>
    public long RttUs { get; set; }

    public double RandomLoss { get; set; }

    /// <summary>Packets the application has handed over by a time (cumulative); null: always more.</summary>
    public Func<long, long>? Available { get; set; }

    /// <summary>Whether the sender tells BBR when it has nothing to send with room in the window (as RudConnection does).</summary>
    public bool ReportAppLimited { get; set; } = true;

    /// <summary>Called after every <see cref="Bbr.OnAckDone"/>.</summary>
    public Action<BbrPath>? AfterAck { get; set; }

    public long Now { get; private set; }
    public long Sent => _sent.Count;
    public long InFlight => _inFlight;
    public long QueueDrops { get; private set; }
    public long RandomDrops { get; private set; }
    public long DeclaredLost { get; private set; }
    public long ReceivedBytes { get; private set; }
    /// <summary>Bytes the sender saw acknowledged for the first time.</summary>
    public long AckedBytes { get; private set; }
    /// <summary>The RTT sample handed to the last <see cref="Bbr.OnAckDone"/> (0: none).</summary>
    public long LastRttSample { get; private set; }
    public int QueueLength => _departures.Count;

    /// <summary>The bottleneck's rate in the unit of <see cref="Bbr.BottleneckBandwidth"/> (bytes per µs).</summary>
    public double Rate => _rate;

    /// <summary>Sets the bottleneck's rate while running (Mbit/s): a path, or the cores forwarding it, slowed down for a while.</summary>
    public void SetRate(double mbitPerSecond) => _rate = mbitPerSecond / 8;

    public string Mode => Bbr.State.Split(' ')[1];

    public long Round => long.Parse(Bbr.State.Split(" round ")[1].Split(' ')[0], CultureInfo.InvariantCulture);

    public void RunUntil(long end)
    {
        while (_events.TryPeek(out var e, out var key) && key.Time <= end)
        {
            _events.Dequeue();
            Now = key.Time;
            switch (e.Kind)
            {
                case Kind.SenderWake:
                    if (_wakeAt == Now) _wakeAt = long.MaxValue;
                    TrySend();
                    break;
                case Kind.Arrive: Receive(e.A); break;
                case Kind.AckTimer:
                    if (_ackDeadline == Now) SendAck();
                    break;
                case Kind.AckArrive: OnAck(_acks[e.Ack]); _acks[e.Ack] = null!; break;
            }
        }
        Now = end;
        TrySend(); // a source that has data again at the end time
    }

    private void Schedule(long time, Kind kind, long a, int ack = 0) => _events.Enqueue((kind, a, ack), (time, _seq++));

    private void WakeAt(long time)
    {
        if (time >= _wakeAt) return;
        _wakeAt = time;
        Schedule(time, Kind.SenderWake, 0);
    }

    private void TrySend()
    {
        while (true)
        {
            if (Available is { } available && _sent.Count >= available(Now))
            {
                if (ReportAppLimited && _inFlight + Mss <= Bbr.Window) Bbr.OnAppLimited(_inFlight);
                WakeAt(Now + 1_000); // look for new data every millisecond
                return;
            }
            if (_inFlight + Mss > Bbr.Window) return; // an acknowledgement wakes the sender
            double rate = Bbr.PacingRate;
            double burst = Math.Max(10.0 * Mss, rate * 2000);
            _tokens = Math.Min(burst, _tokens + (Now - _tokensTime) * rate);
            _tokensTime = Now;
            if (_tokens < 0)
            {
                WakeAt(Now + (long)Math.Ceiling(-_tokens / rate));
                return;
            }
            var p = new SentPacket { Number = (ulong)_sent.Count, SentTime = Now, Size = Mss, AckEliciting = true, InFlight = true };
            Bbr.OnSend(ref p, _inFlight, Now);
            _sent.Add(p);
            _inFlight += Mss;
            _tokens -= Mss;
            Forward(_sent.Count - 1);
        }
    }

    /// <summary>Random loss on the way in, then the bottleneck's queue (tail drop), then half the RTT.</summary>
    private void Forward(long n)
    {
        if (RandomLoss > 0 && _random.NextDouble() < RandomLoss) { RandomDrops++; return; }
        while (_departures.Count > 0 && _departures.Peek() <= Now) _departures.Dequeue();
        if (_departures.Count >= _queueLimit) { QueueDrops++; return; }
        _busyUntil = Math.Max(_busyUntil, Now) + Mss / _rate;
        _departures.Enqueue(_busyUntil);
        Schedule((long)Math.Ceiling(_busyUntil) + RttUs / 2, Kind.Arrive, n);
    }

    private void Receive(long n)
    {
        ReceivedBytes += Mss;
        bool gap = n != _rxLargest + 1;
        _rxLargest = Math.Max(_rxLargest, n);
        _rxPending.Add(n);
        _rxUnacked++;
        int every = ++_rxElicitingReceived <= AckQuickPackets ? 2 : AckEvery;
        if (gap || _rxUnacked >= every) SendAck();
        else if (_ackDeadline == 0)
        {
            _ackDeadline = Now + MaxAckDelayUs;
            Schedule(_ackDeadline, Kind.AckTimer, 0);
        }
    }

    private void SendAck()
    {
        _acks.Add([.. _rxPending]);
        _rxPending.Clear();
        _rxUnacked = 0;
        _ackDeadline = 0;
        Schedule(Now + RttUs / 2, Kind.AckArrive, 0, _acks.Count - 1);
    }

    private void OnAck(List<long> numbers)
    {
        numbers.Sort((a, b) => b.CompareTo(a)); // largest first, like RudConnection.OnAck
        long ackedBytes = 0, rttSample = 0;
        bool first = true;
        foreach (long n in numbers)
        {
            var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_sent);
            ref var p = ref span[(int)n];
            if (first)
            {
                if (!p.Done) rttSample = Now - p.SentTime;
                first = false;
            }
            if (p.Done) continue; // declared lost before: a late acknowledgement
            p.Done = true;
            _inFlight -= p.Size;
            Bbr.OnAcked(ref p, Now);
            ackedBytes += p.Size;
        }
        if (numbers.Count > 0) _largestAcked = Math.Max(_largestAcked, numbers[0]);
        // Loss detection: a packet 3 numbers below the largest acknowledged one is lost.
        var all = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_sent);
        while (_firstUnsettled < _sent.Count && _firstUnsettled + 3 <= _largestAcked)
        {
            ref var p = ref all[(int)_firstUnsettled];
            if (!p.Done)
            {
                p.Done = p.Lost = true;
                _inFlight -= p.Size;
                DeclaredLost++;
                Bbr.OnLost(p.Size);
            }
            _firstUnsettled++;
        }
        if (ackedBytes > 0)
        {
            AckedBytes += ackedBytes;
            LastRttSample = rttSample;
            Bbr.OnAckDone(ackedBytes, rttSample, _inFlight, Now);
            AfterAck?.Invoke(this);
        }
        TrySend();
    }
}

/// <summary>
/// BBR (spec/rud.md §9.3) against <see cref="BbrPath"/>: the model converges on the bottleneck, startup
/// ends on a plateau or on heavy loss, random loss does not slow it, ProbeRTT comes after 10 s
/// without a lower RTT, and app-limited samples do not lower the estimate.
/// </summary>
public class BbrTests(ITestOutputHelper output)
{
    private const long Ms = 1_000, S = 1_000_000;

    private static double Mbit(double bytesPerUs) => bytesPerUs * 8;

    [Theory]
    [InlineData(100, 10)]
    [InlineData(1000, 20)]
    [InlineData(20, 50)]
    public void The_bottleneck_bandwidth_estimate_converges_within_15_percent_of_the_path_rate(int mbit, int rttMs)
    {
        long bdpPackets = (long)(mbit / 8.0 * rttMs * Ms / BbrPath.Mss);
        var path = new BbrPath(mbit, rttMs * Ms, queueLimit: (int)(3 * bdpPackets + 100));
        double lo = double.MaxValue, hi = 0;
        path.AfterAck = p =>
        {
            if (p.Now < 2 * S) return;
            lo = Math.Min(lo, p.Bbr.BottleneckBandwidth);
            hi = Math.Max(hi, p.Bbr.BottleneckBandwidth);
        };
        path.RunUntil(2 * S);
        long rxAt2s = path.ReceivedBytes;
        path.RunUntil(4 * S);
        double goodput = (path.ReceivedBytes - rxAt2s) / (2.0 * S);
        output.WriteLine($"{mbit} Mbit/s {rttMs} ms: estimate {Mbit(lo):0.0}..{Mbit(hi):0.0} Mbit/s over 2-4 s, delivered {Mbit(goodput):0.0} Mbit/s, {path.Bbr.State}, drops {path.QueueDrops}");
        Assert.Equal("ProbeBw", path.Mode);
        Assert.InRange(lo, 0.85 * path.Rate, 1.15 * path.Rate);
        Assert.InRange(hi, 0.85 * path.Rate, 1.15 * path.Rate);
        // The model is also used: the path is kept busy.
        Assert.True(goodput >= 0.9 * path.Rate, $"delivered {Mbit(goodput):0.0} Mbit/s of {mbit}");
        Assert.Equal(rttMs * Ms, path.Bbr.MinRtt, (double)rttMs * Ms * 0.05);
    }

    [Theory]
    [InlineData(100, 10)]
    [InlineData(1000, 20)]
    public void Startup_ends_within_a_few_rounds_once_the_bandwidth_stops_growing_and_drain_empties_the_queue(int mbit, int rttMs)
    {
        long bdpPackets = (long)(mbit / 8.0 * rttMs * Ms / BbrPath.Mss);
        var path = new BbrPath(mbit, rttMs * Ms, queueLimit: (int)(3 * bdpPackets + 100));
        long plateauRound = -1, startupEndRound = -1, probeBwAt = -1;
        int queueAtProbeBw = -1;
        path.AfterAck = p =>
        {
            if (plateauRound < 0 && p.Bbr.BottleneckBandwidth >= 0.8 * p.Rate) plateauRound = p.Round;
            if (startupEndRound < 0 && p.Mode != "Startup") startupEndRound = p.Round;
            if (probeBwAt < 0 && p.Mode == "ProbeBw") { probeBwAt = p.Now; queueAtProbeBw = p.QueueLength; }
        };
        path.RunUntil(3 * S);
        output.WriteLine($"{mbit} Mbit/s {rttMs} ms: 80 % of the rate in round {plateauRound}, startup ended in round {startupEndRound}, ProbeBW at {probeBwAt / Ms} ms with {queueAtProbeBw} packets queued; drops {path.QueueDrops}");
        Assert.True(plateauRound > 0, "the estimate never reached 80 % of the rate");
        Assert.True(startupEndRound > 0, "startup never ended");
        // Three rounds without 25 % growth end startup (plus the round the estimate is still rising in).
        Assert.InRange(startupEndRound, plateauRound, plateauRound + 4);
        Assert.True(probeBwAt > 0, "drain never ended");
        // Drain ends once in flight is down to one BDP: the queue startup built is (nearly) gone.
        Assert.True(queueAtProbeBw <= bdpPackets / 4 + 10, $"{queueAtProbeBw} packets still queued at the start of ProbeBW (BDP {bdpPackets})");
        Assert.Equal(0, path.QueueDrops);
    }

    [Theory]
    [InlineData(100, 10, 7)]
    [InlineData(100, 10, 8)]
    [InlineData(1000, 20, 9)]
    [InlineData(1000, 100, 1152)] // this seed loses 11 of 72 packets (15.3 %) in startup round 4: startup ends at 6.6 Mbit/s
    public void Five_percent_random_loss_does_not_hold_the_delivery_rate_below_80_percent_of_the_path(int mbit, int rttMs, int seed)
    {
        long bdpPackets = (long)(mbit / 8.0 * rttMs * Ms / BbrPath.Mss);
        var path = new BbrPath(mbit, rttMs * Ms, queueLimit: (int)(bdpPackets + 100), randomLoss: 0.05, seed: seed);
        path.RunUntil(2 * S);
        long rx = path.ReceivedBytes;
        path.RunUntil(5 * S);
        double delivered = (path.ReceivedBytes - rx) / (3.0 * S);
        output.WriteLine($"{mbit} Mbit/s {rttMs} ms 5 % loss: delivered {Mbit(delivered):0.0} Mbit/s over 2-5 s, declared lost {path.DeclaredLost} of {path.Sent}, random drops {path.RandomDrops}, queue drops {path.QueueDrops}, {path.Bbr.State}, window {path.Bbr.Window}");
        Assert.True(path.RandomDrops > path.Sent / 40, "the path lost less than it should");
        Assert.True(delivered >= 0.8 * path.Rate, $"delivered {Mbit(delivered):0.0} Mbit/s of {mbit}");
        Assert.InRange(path.Bbr.BottleneckBandwidth, 0.8 * path.Rate, 1.15 * path.Rate);
    }

    [Theory]
    [InlineData(400, 10, 0.0)]
    [InlineData(400, 10, 0.01)]
    [InlineData(400, 10, 0.05)]
    public void A_startup_ended_by_a_slow_first_half_second_climbs_to_the_path_rate_in_ProbeBW(int mbit, int rttMs, double loss)
    {
        // Issue 22's rud "collapse" under load: starved cores forwarded 25 Mbit/s while startup ran; it ended there.
        long bdpPackets = (long)(mbit / 8.0 * rttMs * Ms / BbrPath.Mss);
        var path = new BbrPath(25, rttMs * Ms, queueLimit: (int)(bdpPackets + 100), randomLoss: loss, seed: 3);
        path.RunUntil(500 * Ms);
        string after = path.Bbr.State;
        path.SetRate(mbit);
        path.RunUntil(2 * S);
        long rx = path.ReceivedBytes;
        path.RunUntil(3 * S);
        double delivered = (path.ReceivedBytes - rx) / (1.0 * S);
        output.WriteLine($"{mbit} Mbit/s {rttMs} ms {loss:P0} loss after 500 ms at 25 Mbit/s ({after}): delivered {Mbit(delivered):0.0} Mbit/s over 2-3 s, {path.Bbr.State}, window {path.Bbr.Window}");
        Assert.True(delivered >= 0.8 * path.Rate, $"delivered {Mbit(delivered):0.0} Mbit/s of {mbit}");
    }

    [Fact]
    public void Random_loss_of_10_percent_does_not_end_startup_before_half_the_path_rate()
    {
        // Early startup rounds move 20-160 packets: 10 of them lost (the rule's minimum) is more than
        // 15 % often enough at 10 % random loss, and BBR v1 then climbs from there by 25 % per 8 rounds.
        int early = 0, runs = 200;
        for (int seed = 1; seed <= runs; seed++)
        {
            var path = new BbrPath(1000, 20 * Ms, queueLimit: 100_000, randomLoss: 0.10, seed: seed);
            bool ended = false;
            double bwAtEnd = 0;
            path.AfterAck = p => { if (!ended && p.Mode != "Startup") { ended = true; bwAtEnd = p.Bbr.BottleneckBandwidth; } };
            path.RunUntil(190 * Ms);
            if (ended && bwAtEnd < 0.5 * path.Rate) early++;
        }
        output.WriteLine($"{early} of {runs} connections left startup below half the path rate at 10 % random loss");
        Assert.Equal(0, early);
    }

    [Fact]
    public void A_shallow_queue_overflowing_in_startup_ends_startup_on_the_round_loss_rule()
    {
        // 1 Gbit/s, 20 ms: a BDP of 1852 packets, a queue of 50. Startup paces at 2.885 × the estimate,
        // so the queue overflows while the estimate is still growing by more than 25 % a round: the
        // plateau rule cannot end startup yet, only the loss rule can.
        var deep = Run(queueLimit: 6000);
        var shallow = Run(queueLimit: 50);
        output.WriteLine($"deep queue: startup ended in round {deep.EndRound}, no round over 15 % loss ({deep.HeavyLossRound}); " +
            $"shallow: first round over 15 % loss {shallow.HeavyLossRound} ({shallow.HeavyLoss:P0}), startup ended in round {shallow.EndRound}, " +
            $"estimate grew {shallow.LastGrowth:P0} in the round before, {Mbit(shallow.BwAtEnd):0} Mbit/s then");
        Assert.Equal(-1, deep.HeavyLossRound);
        Assert.True(shallow.HeavyLossRound > 0, "no round lost more than 15 %: the scenario does not test the rule");
        // The round that counted the loss ends startup when it ends (the check runs at a round's start).
        Assert.InRange(shallow.EndRound, shallow.HeavyLossRound, shallow.HeavyLossRound + 1);
        Assert.True(shallow.LastGrowth >= 0.25, $"the estimate grew only {shallow.LastGrowth:P0} in the last startup round: the plateau rule could have ended it");
        Assert.True(shallow.EndRound < deep.EndRound - 1, $"startup ended in round {shallow.EndRound} with loss, {deep.EndRound} without: the loss did not end it");

        static (long HeavyLossRound, double HeavyLoss, long EndRound, double LastGrowth, double BwAtEnd) Run(int queueLimit)
        {
            var path = new BbrPath(1000, 20 * Ms, queueLimit);
            long heavyRound = -1, endRound = -1, lastRound = 0, ackedAtRound = 0, lostAtRound = 0;
            double heavy = 0, bwAtEnd = 0, growth = 0, bwAtRoundStart = 0, roundGrowth = 0;
            path.AfterAck = p =>
            {
                long round = p.Round;
                if (round != lastRound)
                {
                    // The share of the round's outcomes (as the sender saw them) that were losses.
                    long acked = p.AckedBytes - ackedAtRound, lost = (p.DeclaredLost - lostAtRound) * BbrPath.Mss;
                    double share = acked + lost > 0 ? (double)lost / (acked + lost) : 0;
                    if (heavyRound < 0 && share > 0.15) { heavyRound = round; heavy = share; }
                    ackedAtRound = p.AckedBytes;
                    lostAtRound = p.DeclaredLost;
                    lastRound = round;
                    // As BBR compares: the estimate at this round's start against the last round's start.
                    roundGrowth = bwAtRoundStart > 0 ? p.Bbr.BottleneckBandwidth / bwAtRoundStart - 1 : 0;
                    bwAtRoundStart = p.Bbr.BottleneckBandwidth;
                }
                if (endRound < 0 && p.Mode != "Startup")
                {
                    endRound = round;
                    bwAtEnd = p.Bbr.BottleneckBandwidth;
                    growth = roundGrowth;
                }
            };
            path.RunUntil(2 * S);
            return (heavyRound, heavy, endRound, growth, bwAtEnd);
        }
    }

    [Fact]
    public void Ten_seconds_without_a_lower_RTT_enter_ProbeRTT_at_four_packets_for_200_ms_and_a_round_then_restore_the_window()
    {
        // 100 Mbit/s, 10 ms; after 1 s the route gets 5 ms longer, so no sample reaches the minimum again.
        var path = new BbrPath(100, 10 * Ms, queueLimit: 400);
        long enter = -1, leave = -1, windowBefore = 0, windowAfter = 0, maxWindowInside = 0, minInFlightInside = long.MaxValue;
        long lastWindow = 0, rttBefore = 0, sampleLo = long.MaxValue, sampleHi = 0;
        path.AfterAck = p =>
        {
            string mode = p.Mode;
            if (enter < 0 && mode == "ProbeRtt") { enter = p.Now; windowBefore = lastWindow; rttBefore = p.Bbr.MinRtt; }
            if (enter >= 0 && leave < 0)
            {
                if (mode == "ProbeRtt")
                {
                    maxWindowInside = Math.Max(maxWindowInside, p.Bbr.Window);
                    minInFlightInside = Math.Min(minInFlightInside, p.InFlight);
                    if (p.LastRttSample > 0) { sampleLo = Math.Min(sampleLo, p.LastRttSample); sampleHi = Math.Max(sampleHi, p.LastRttSample); }
                }
                else { leave = p.Now; windowAfter = p.Bbr.Window; }
            }
            lastWindow = p.Bbr.Window;
        };
        path.RunUntil(1 * S);
        Assert.Equal("ProbeBw", path.Mode);
        Assert.Equal(-1, enter);
        path.RttUs = 15 * Ms;
        path.RunUntil(13 * S);
        output.WriteLine($"ProbeRTT from {enter / Ms} ms to {leave / Ms} ms ({(leave - enter) / Ms} ms); window {windowBefore} -> at most {maxWindowInside} inside (in flight down to {minInFlightInside}) -> {windowAfter}; min RTT {rttBefore} -> {path.Bbr.MinRtt} us, samples in ProbeRTT {sampleLo}..{sampleHi} us; {path.Bbr.State}");
        Assert.True(enter > 0, "ProbeRTT never came");
        // The last sample at the 10 ms minimum came at the latest at 1 s (earlier when a standing
        // queue of the probing cycle hid it), so ProbeRTT comes 10 s after it: not before 10 s, not after 11 s.
        Assert.InRange(enter, 10_000 * Ms, 11_100 * Ms);
        Assert.Equal(4L * BbrPath.Mss, maxWindowInside);
        Assert.True(minInFlightInside <= 4L * BbrPath.Mss);
        Assert.True(leave > 0, "ProbeRTT never ended");
        // 200 ms once in flight is down to 4 packets, plus a round (15 ms): the drain to 4 packets takes about a round more.
        Assert.InRange(leave - enter, 200 * Ms, 200 * Ms + 4 * 15 * Ms);
        Assert.True(windowAfter >= windowBefore, $"window {windowAfter} after ProbeRTT, {windowBefore} before");
        Assert.Equal(15 * Ms, path.Bbr.MinRtt, 15.0 * Ms * 0.05);
        // The route's new RTT is the minimum now: no second ProbeRTT within the next 10 s (checked to 13 s).
        Assert.Equal("ProbeBw", path.Mode);
        Assert.True(path.Bbr.BottleneckBandwidth >= 0.85 * path.Rate);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void App_limited_samples_do_not_lower_the_estimate(bool reportAppLimited)
    {
        // 100 Mbit/s, 10 ms: bulk for 1 s, silent for 0.5 s, then one packet every 5 ms (2.2 Mbit/s) for 1 s
        // (about 100 rounds: the 10-round max filter would forget the path rate), then bulk again.
        var path = new BbrPath(100, 10 * Ms, queueLimit: 400) { ReportAppLimited = reportAppLimited };
        long bulkSent = -1;
        path.Available = now =>
        {
            if (now < 1 * S) return long.MaxValue;
            if (bulkSent < 0) bulkSent = path.Sent;
            if (now < 1_500 * Ms) return bulkSent;
            if (now < 2_500 * Ms) return bulkSent + (now - 1_500 * Ms) / (5 * Ms) + 1;
            return long.MaxValue;
        };
        double lowest = double.MaxValue, lowestAfter = double.MaxValue;
        path.AfterAck = p =>
        {
            if (p.Now >= 1 * S && p.Now < 2_500 * Ms) lowest = Math.Min(lowest, p.Bbr.BottleneckBandwidth);
            if (p.Now >= 2_500 * Ms) lowestAfter = Math.Min(lowestAfter, p.Bbr.BottleneckBandwidth);
        };
        path.RunUntil(1 * S);
        double before = path.Bbr.BottleneckBandwidth;
        Assert.InRange(before, 0.85 * path.Rate, 1.15 * path.Rate);
        long roundBefore = path.Round;
        path.RunUntil(2_500 * Ms);
        long trickleRounds = path.Round - roundBefore;
        double after = path.Bbr.BottleneckBandwidth;
        output.WriteLine($"report app-limited {reportAppLimited}: estimate {Mbit(before):0.0} Mbit/s before, lowest {Mbit(lowest):0.0} during, {Mbit(after):0.0} after {trickleRounds} rounds of trickle; {path.Bbr.State}");
        Assert.True(trickleRounds > 20, $"only {trickleRounds} rounds in the trickle: the max filter's window was not passed");
        if (reportAppLimited)
        {
            Assert.InRange(lowest, 0.85 * path.Rate, 1.15 * path.Rate);
            // Nor when bulk sending resumes (the max filter's slots were emptied by the trickle's rounds).
            long rx = path.ReceivedBytes;
            path.RunUntil(4 * S);
            double delivered = (path.ReceivedBytes - rx) / (1.5 * S);
            output.WriteLine($"after the trickle: estimate at least {Mbit(lowestAfter):0.0} Mbit/s, delivered {Mbit(delivered):0.0} Mbit/s over 2.5-4 s");
            Assert.InRange(lowestAfter, 0.85 * path.Rate, 1.15 * path.Rate);
            Assert.True(delivered >= 0.85 * path.Rate, $"delivered {Mbit(delivered):0.0} Mbit/s after the trickle");
        }
        else
        {
            // Without the marking the same trickle drags the estimate down: the scenario can tell.
            Assert.True(lowest < 0.2 * path.Rate, $"lowest {Mbit(lowest):0.0} Mbit/s without app-limited marking");
        }
    }
}
