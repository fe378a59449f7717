namespace PtHost.Transports.Rud;

/// <summary>Congestion control of a connection (spec/rud.md §9.3).</summary>
public enum CongestionControl
{
    /// <summary>A model of the path (bottleneck bandwidth and round-trip time) sets the pacing rate and the window; random loss does not slow it.</summary>
    Bbr,
    /// <summary>Loss-based NewReno with pacing and the loss tolerance.</summary>
    NewReno,
}

/// <summary>
/// BBR (version 1: draft-cardwell-iccrg-bbr-congestion-control-00, Linux tcp_bbr.c) over the
/// delivery-rate samples of draft-cheng-iccrg-delivery-rate-estimation (spec/rud.md §9.3).
/// The connection stamps each sent packet with the delivery state, hands every newly
/// acknowledged packet to <see cref="OnAcked"/> and ends each acknowledgement with
/// <see cref="OnAckDone"/>; it sends within <see cref="Window"/> at <see cref="PacingRate"/>.
/// Times are microseconds, sizes bytes. Runs under the connection's lock; allocates nothing.
/// </summary>
internal sealed class Bbr
{
    private const double HighGain = 2.885;               // 2 / ln 2: doubles the rate every round in startup
    private const double DrainGain = 1 / HighGain;
    private const double ProbeBwCwndGain = 2;
    private const int BandwidthRounds = 10;              // the max filter's window, in round trips
    private const long RtPropLifetimeUs = 10_000_000;    // a min RTT older than 10 s is probed again
    private const long ProbeRttDurationUs = 200_000;
    private const int FullPipeRounds = 3;
    private static readonly double[] s_cycle = [1.25, 0.75, 1, 1, 1, 1, 1, 1];

    private enum Mode { Startup, Drain, ProbeBw, ProbeRtt }

    private readonly int _mss;
    private readonly long _minWindow, _floorWindow, _ackAllowance;
    private Mode _mode = Mode.Startup;

    // Delivery-rate estimation (connection state).
    private long _delivered, _deliveredTime, _firstSentTime, _appLimitedUntil;
    // The sample of the acknowledgement being processed.
    private long _rsPriorDelivered = -1, _rsPriorTime, _rsSendElapsed, _rsAckElapsed;
    private bool _rsAppLimited;

    // The model.
    private readonly double[] _roundMax = new double[BandwidthRounds];
    private double _btlBw;                 // bytes per µs
    private long _rtProp = long.MaxValue, _rtPropStamp;
    private bool _rtPropExpired;
    private long _nextRoundDelivered, _roundCount;
    private bool _roundStart;
    private double _fullBw;
    private int _fullBwCount;
    private bool _filledPipe;
    private int _cycleIndex;
    private long _cycleStamp;
    private long _probeRttDone;
    private bool _probeRttRoundDone;
    private long _priorWindow;
    private double _pacingGain = HighGain, _cwndGain = HighGain;
    // Loss in the current round and in the current acknowledgement.
    private long _roundLost, _roundDeliveredStart, _ackLost;
    /// <summary>A round that loses more than this share of what it moved ends startup (spec/rud.md §9.3): far above random loss (5 % varies by ±2 % per round).</summary>
    public const double StartupLossLimit = 0.15;
    private const int StartupLossMinPackets = 50;

    /// <param name="ackEvery">How many ack-eliciting packets the receiver lets pass before it acknowledges (§9.1).</param>
    /// <param name="receiveBatch">How many datagrams a receiver handles before it sends what they made due (§9.4).</param>
    public Bbr(int maxPacket, int ackEvery, int receiveBatch, long initialWindow, long initialRttUs, long now)
    {
        _mss = maxPacket;
        _minWindow = 4L * maxPacket;
        // The receiver acknowledges every ackEvery-th packet or after its ack delay: a window
        // smaller than that waits for the delay each round trip and the estimate decays with it
        // (loopback, tiny BDP). It answers once per receive batch: the window keeps room for two
        // batches on top of the BDP (on loopback 2 x 10 packets held RUD to 2.5 Gbit/s, 2 x 32 to 3.5).
        _floorWindow = (ackEvery + 2L) * maxPacket;
        _ackAllowance = 2L * Math.Max(ackEvery, receiveBatch) * maxPacket;
        Window = initialWindow;
        PacingRate = HighGain * initialWindow / Math.Max(initialRttUs, 1);
        _rtPropStamp = now;
        _deliveredTime = _firstSentTime = now;
    }

    /// <summary>The congestion window, bytes.</summary>
    public long Window { get; private set; }

    /// <summary>Bytes per microsecond.</summary>
    public double PacingRate { get; private set; }

    /// <summary>The bottleneck bandwidth estimate in bytes per microsecond (0 before the first sample).</summary>
    public double BottleneckBandwidth => _btlBw;

    /// <summary>The minimum RTT seen (µs), or 0 before the first sample.</summary>
    public long MinRtt => _rtProp == long.MaxValue ? 0 : _rtProp;

    public string State => $"bbr {_mode} bw {_btlBw * 8:0.0} Mbit/s rtprop {MinRtt} us round {_roundCount} gain {_pacingGain:0.00}";

    /// <summary>Stamps a packet about to be sent in flight with the delivery state (draft-cheng §3.2).</summary>
    public void OnSend(ref SentPacket p, long bytesInFlight, long now)
    {
        if (bytesInFlight == 0) _firstSentTime = _deliveredTime = now;
        p.Delivered = _delivered;
        p.DeliveredTime = _deliveredTime;
        p.FirstSentTime = _firstSentTime;
        p.AppLimited = _appLimitedUntil != 0;
    }

    /// <summary>The sender had nothing to send while the window had room: samples until now are marked app-limited.</summary>
    public void OnAppLimited(long bytesInFlight) => _appLimitedUntil = Math.Max(_delivered + bytesInFlight, 1);

    /// <summary>A packet in flight was acknowledged for the first time.</summary>
    public void OnAcked(ref SentPacket p, long now)
    {
        _delivered += p.Size;
        _deliveredTime = now;
        if (p.Delivered >= _rsPriorDelivered)
        {
            _rsPriorDelivered = p.Delivered;
            _rsPriorTime = p.DeliveredTime;
            _rsAppLimited = p.AppLimited;
            _rsSendElapsed = p.SentTime - p.FirstSentTime;
            _rsAckElapsed = _deliveredTime - p.DeliveredTime;
            _firstSentTime = p.SentTime;
        }
    }

    /// <summary>
    /// Ends one acknowledgement: takes the rate sample, updates the model, sets the pacing rate
    /// and the window. <paramref name="rttSample"/> is the RTT this acknowledgement measured (0: none).
    /// </summary>
    public void OnAckDone(long ackedBytes, long rttSample, long bytesInFlight, long now)
    {
        if (_appLimitedUntil != 0 && _delivered > _appLimitedUntil) _appLimitedUntil = 0;
        bool haveSample = _rsPriorDelivered >= 0;
        double rate = 0;
        long priorDelivered = _rsPriorDelivered;
        if (haveSample)
        {
            long interval = Math.Max(_rsSendElapsed, _rsAckElapsed);
            long delivered = _delivered - _rsPriorDelivered;
            // An interval shorter than the minimum RTT is an artefact of ack compression (draft-cheng §3.3).
            if (interval > 0 && (_rtProp == long.MaxValue || interval >= _rtProp)) rate = (double)delivered / interval;
        }
        _rsPriorDelivered = -1;

        // Rounds: one ends when a packet sent after the previous round's end is acknowledged.
        _roundStart = false;
        if (haveSample && priorDelivered >= _nextRoundDelivered)
        {
            _nextRoundDelivered = _delivered;
            _roundCount++;
            _roundStart = true;
            _roundMax[_roundCount % BandwidthRounds] = 0;
            // Startup overshooting a shallow buffer loses heavily: the pipe is full.
            long moved = _delivered - _roundDeliveredStart;
            if (!_filledPipe && _roundLost >= StartupLossMinPackets * _mss && _roundLost > StartupLossLimit * (moved + _roundLost)) _filledPipe = true;
            _roundLost = 0;
            _roundDeliveredStart = _delivered;
        }
        if (rate > 0 && (!_rsAppLimited || rate >= _btlBw))
        {
            ref double slot = ref _roundMax[_roundCount % BandwidthRounds];
            if (rate > slot) slot = rate;
            double max = 0;
            foreach (double r in _roundMax) max = Math.Max(max, r);
            _btlBw = max;
        }

        // Modes.
        if (_mode == Mode.ProbeBw) AdvanceCycle(bytesInFlight, now);
        _ackLost = 0;
        if (_roundStart && !_filledPipe && !_rsAppLimited && _btlBw > 0)
        {
            if (_btlBw >= _fullBw * 1.25) { _fullBw = _btlBw; _fullBwCount = 0; }
            else if (++_fullBwCount >= FullPipeRounds) _filledPipe = true;
        }
        if (_mode == Mode.Startup && _filledPipe) { _mode = Mode.Drain; _pacingGain = DrainGain; _cwndGain = HighGain; }
        if (_mode == Mode.Drain && bytesInFlight <= Bdp(1)) EnterProbeBw(now);

        _rtPropExpired = now > _rtPropStamp + RtPropLifetimeUs;
        if (rttSample > 0 && (rttSample <= _rtProp || _rtPropExpired))
        {
            _rtProp = rttSample;
            _rtPropStamp = now;
        }
        UpdateProbeRtt(bytesInFlight, now);

        // Pacing rate; in startup it only rises.
        if (_btlBw > 0)
        {
            double paced = _pacingGain * _btlBw;
            if (_filledPipe || paced > PacingRate) PacingRate = paced;
        }
        else if (rttSample > 0) PacingRate = Math.Max(PacingRate, HighGain * Window / rttSample);

        // Window.
        long target = Bdp(_cwndGain) + _ackAllowance;
        if (_mode == Mode.ProbeRtt) Window = Math.Min(Window, _minWindow);
        else if (_filledPipe) Window = Math.Min(Window + ackedBytes, target);
        else if (Window < target || _delivered < 10L * _mss) Window += ackedBytes;
        Window = Math.Max(Window, _mode == Mode.ProbeRtt ? _minWindow : _floorWindow);
    }

    /// <summary>A packet in flight was declared lost.</summary>
    public void OnLost(int size)
    {
        _roundLost += size;
        _ackLost += size;
    }

    /// <summary>Losses spanning more than three PTOs (RFC 9002 §7.6): the window starts again from the minimum; the model stays.</summary>
    public void OnPersistentCongestion() => Window = _minWindow;

    private long Bdp(double gain)
    {
        if (_rtProp == long.MaxValue || _btlBw <= 0) return 10L * _mss;
        return (long)(gain * _btlBw * _rtProp);
    }

    private void EnterProbeBw(long now)
    {
        _mode = Mode.ProbeBw;
        _cwndGain = ProbeBwCwndGain;
        // Start anywhere but the draining phase (index 1).
        _cycleIndex = (int)(now % 7);
        if (_cycleIndex >= 1) _cycleIndex++;
        _cycleStamp = now;
        _pacingGain = s_cycle[_cycleIndex];
    }

    private void AdvanceCycle(long bytesInFlight, long now)
    {
        bool elapsed = now - _cycleStamp > _rtProp;
        double gain = s_cycle[_cycleIndex];
        bool next = gain switch
        {
            > 1 => elapsed && (bytesInFlight >= Bdp(gain) || _ackLost > 0), // probed: the pipe held 1.25 × BDP for a round trip, or lost
            < 1 => elapsed || bytesInFlight <= Bdp(1),      // drained what the probe queued
            _ => elapsed,
        };
        if (!next) return;
        _cycleIndex = (_cycleIndex + 1) % s_cycle.Length;
        _cycleStamp = now;
        _pacingGain = s_cycle[_cycleIndex];
    }

    private void UpdateProbeRtt(long bytesInFlight, long now)
    {
        if (_mode != Mode.ProbeRtt && _rtPropExpired && _rtProp != long.MaxValue)
        {
            _mode = Mode.ProbeRtt;
            _pacingGain = 1;
            _cwndGain = 1;
            _priorWindow = Window;
            _probeRttDone = 0;
        }
        if (_mode != Mode.ProbeRtt) return;
        if (_probeRttDone == 0 && bytesInFlight <= _minWindow)
        {
            _probeRttDone = now + ProbeRttDurationUs;
            _probeRttRoundDone = false;
            _nextRoundDelivered = _delivered;
        }
        else if (_probeRttDone != 0)
        {
            if (_roundStart) _probeRttRoundDone = true;
            if (_probeRttRoundDone && now > _probeRttDone)
            {
                _rtPropStamp = now;
                Window = Math.Max(Window, _priorWindow);
                if (_filledPipe) EnterProbeBw(now);
                else { _mode = Mode.Startup; _pacingGain = _cwndGain = HighGain; }
            }
        }
    }
}
