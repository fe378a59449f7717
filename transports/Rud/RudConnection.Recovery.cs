namespace PtHost.Transports.Rud;

/// <summary>Acknowledgements, loss detection, timers and pacing (spec/rud.md §7.4, §9).</summary>
public sealed partial class RudConnection
{
    private void OnAck(in HeaderBlock header, ReadOnlySpan<byte> bitfield, long now)
    {
        if (header.AckIndex >= _nextSent) return; // acknowledges a packet never sent: ignored
        bool newlyAcked = false;
        long largestNewlySentTime = -1;
        bool largestEliciting = false;
        AckOne(header.AckIndex, ref newlyAcked, now, isLargest: true, ref largestNewlySentTime, ref largestEliciting);
        // Packets below the oldest one still kept are settled: the walk stops there.
        ulong floor = _sent.Count > 0 ? _sent.FirstNumber : _nextSent;
        for (int b = 0; b < bitfield.Length; b++)
        {
            int v = bitfield[b];
            if (v == 0) continue;
            ulong top = header.AckIndex - 1 - 8 * (ulong)b; // the packet bit 7 of this byte names
            if ((ulong)(8 * b) + 1 > header.AckIndex || top < floor) break;
            for (int j = 0; j < 8; j++)
            {
                if ((v & (0x80 >> j)) == 0) continue;
                if ((ulong)j > top) break;
                ulong n = top - (ulong)j;
                if (n < floor) break;
                AckOne(n, ref newlyAcked, now, isLargest: false, ref largestNewlySentTime, ref largestEliciting);
            }
        }
        if (_mtuProbing && _mtuProbe <= header.AckIndex)
        {
            // The probe is not kept for loss detection, so the window walk may stop short of it.
            ulong d = header.AckIndex - _mtuProbe;
            if (d == 0 || (d - 1 < (ulong)bitfield.Length * 8 && (bitfield[(int)((d - 1) >> 3)] & (0x80 >> (int)((d - 1) & 7))) != 0))
            {
                // The larger packet crossed the path (§9.5).
                _mtuProbing = false;
                _mtuDone = true;
                _maxPacket = RudWire.ProbedPacketSize;
                _counters.Increment(ref _counters.PathMtuRaised);
            }
        }
        if (!_anyAcked || header.AckIndex > _largestAcked)
        {
            _largestAcked = header.AckIndex;
            _anyAcked = true;
        }
        long rttSample = 0;
        if (largestNewlySentTime >= 0 && largestEliciting)
        {
            UpdateRtt(now - largestNewlySentTime, (long)Math.Min(header.AckDelayMicroseconds, (ulong)MaxAckDelayUs));
            rttSample = _latestRtt;
        }
        else if (_newestElicitingSent > 0)
        {
            // The largest was ack-only (both directions busy): the newest ack-eliciting packet this
            // acknowledgement covers still measures the path; its ack delay is unknown, so none is taken off.
            UpdateRtt(now - _newestElicitingSent, 0);
            rttSample = _latestRtt;
        }
        _newestElicitingSent = 0;
        if (!newlyAcked) return;
        DetectLoss(now);
        _ptoCount = 0;
        if (_bbr is not null)
        {
            _bbr.OnAckDone(_ackedBytes, rttSample, _bytesInFlight, now);
            _ackedBytes = 0;
        }
        _sent.PopDone(now - 4 * _srtt);
    }

    private void AckOne(ulong n, ref bool newlyAcked, long now, bool isLargest, ref long largestSentTime, ref bool largestEliciting)
    {

        int i = _sent.IndexOf(n);
        if (i < 0) return;
        ref var p = ref _sent[i];
        if (p.Done)
        {
            if (p.Lost)
            {
                // A late acknowledgement: the loss was reordering (RFC 9002 §6.1.1, §7.? undo).
                p.Lost = false;
                _counters.Increment(ref _counters.SpuriousLosses);
                _lossRate = Math.Max(0, _lossRate - LossWeight);
                ulong distance = (_anyAcked ? Math.Max(_largestAcked, n) : n) - n;
                _packetThreshold = (int)Math.Min(MaxPacketThreshold, Math.Max((ulong)_packetThreshold, distance + 1));
                if (n == _recoveryCause)
                {
                    _cwnd = Math.Max(_cwnd, _cwndBeforeRecovery);
                    _ssthresh = _ssthreshBeforeRecovery;
                    _recoveryCause = ulong.MaxValue;
                }
            }
            return;
        }
        p.Done = true;
        newlyAcked = true;
        if (isLargest) { largestSentTime = p.SentTime; largestEliciting = p.AckEliciting; }
        else if (p.AckEliciting && p.SentTime > _newestElicitingSent) _newestElicitingSent = p.SentTime;
        if (p.InFlight)
        {
            // An underused window does not grow (§9.3, RFC 9002 §7.8): only while at least half of it is in flight.
            bool windowUsed = 2 * _bytesInFlight >= _cwnd;
            _bytesInFlight -= p.Size;
            _lossRate -= _lossRate * LossWeight;
            if (_bbr is not null)
            {
                _bbr.OnAcked(ref p, now);
                _ackedBytes += p.Size;
            }
            // NewReno (§9.3): no growth for packets sent before the current recovery period began.
            else if (p.SentTime > _recoveryStart && windowUsed)
                _cwnd += _cwnd < _ssthresh ? p.Size : Math.Max(1, (long)MaxPacket * p.Size / _cwnd);
        }
        if (n >= _sendPhaseFirst) _sendPhaseAcked = true;
        p.Stream?.OnAcked(p.Offset, p.Length, p.Fin);
        p.Stream = null;
    }

    private void UpdateRtt(long latest, long ackDelay)
    {
        _latestRtt = Math.Max(latest, 1);
        if (!_hasRtt)
        {
            _hasRtt = true;
            _minRtt = _srtt = _latestRtt;
            _rttvar = _latestRtt / 2;
            return;
        }
        _minRtt = Math.Min(_minRtt, _latestRtt);
        long adjusted = _latestRtt >= _minRtt + ackDelay ? _latestRtt - ackDelay : _latestRtt;
        _rttvar = (3 * _rttvar + Math.Abs(_srtt - adjusted)) / 4;
        _srtt = (7 * _srtt + adjusted) / 8;
    }

    private long PtoDuration => _srtt + Math.Max(4 * _rttvar, GranularityUs) + MaxAckDelayUs;

    private void DetectLoss(long now)
    {
        if (!_anyAcked) return;
        long lossDelay = Math.Max(9 * Math.Max(_srtt, _latestRtt) / 8, GranularityUs);
        long lostSendTime = now - lossDelay;
        _lossTime = 0;
        long largestLostSent = -1, firstLostSent = long.MaxValue;
        ulong cause = 0;
        // The walk starts at the first packet that may not be done: the done ones before it (declared-lost packets
        // linger 4 RTTs at the ring's front, §9.2) would only be skipped, once per acknowledgement.
        int start = _sent.Count > 0 && _lossScanFrom > _sent.FirstNumber ? (int)Math.Min((ulong)_sent.Count, _lossScanFrom - _sent.FirstNumber) : 0;
        bool prefixDone = true;
        for (int i = start; i < _sent.Count; i++)
        {
            ref var p = ref _sent[i];
            if (p.Number > _largestAcked) break;
            if (p.Done || !p.InFlight)
            {
                if (!p.InFlight) p.Done = true;
                if (prefixDone) _lossScanFrom = p.Number + 1;
                continue;
            }
            if (p.Number + (ulong)_packetThreshold <= _largestAcked || p.SentTime <= lostSendTime)
            {
                if (prefixDone) _lossScanFrom = p.Number + 1;
                p.Done = true;
                p.Lost = true;
                cause = p.Number;
                _bytesInFlight -= p.Size;
                _counters.Increment(ref _counters.PacketsLost);
                _bbr?.OnLost(p.Size);
                _lossRate += (1 - _lossRate) * LossWeight;
                largestLostSent = Math.Max(largestLostSent, p.SentTime);
                firstLostSent = Math.Min(firstLostSent, p.SentTime);
                Requeue(ref p, p.Number);
            }
            else
            {
                prefixDone = false;
                long t = p.SentTime + lossDelay;
                if (_lossTime == 0 || t < _lossTime) _lossTime = t;
            }
        }
        if (largestLostSent >= 0) OnCongestionEvent(largestLostSent, firstLostSent, cause, now);
        _sent.PopDone(now - 4 * _srtt);
    }

    /// <summary>Puts a packet's reliable frames back in the send queues (§9.2).</summary>
    private void Requeue(ref SentPacket p, ulong number)
    {
        if (p.Stream is { } s)
        {
            s.OnLost(p.Offset, p.Length, p.Fin);
            _retransmitOf = number;
            if (p.Done) p.Stream = null;
        }
        if (p.Control.Type == FrameType.ResetStream) _control.Enqueue(p.Control);
        else if (p.Control.Type == FrameType.MaxStreamData && _streams.TryGetValue(p.Control.StreamId, out var w) && !w.WindowUpdatePending)
        {
            w.WindowUpdatePending = true;
            _control.Enqueue(p.Control);
        }
    }

    private ulong _retransmitOf;

    /// <summary>Every kept packet numbered below this is done (acknowledged or declared lost; done never reverts): where <see cref="DetectLoss"/> starts.</summary>
    private ulong _lossScanFrom;
    private long _ackedBytes, _newestElicitingSent;
    private bool _rekeyProbeSent;

    private void OnCongestionEvent(long largestLostSent, long firstLostSent, ulong cause, long now)
    {
        if (_bbr is not null)
        {
            // BBR (§9.3) reads congestion from its model of the path, not from loss.
            if (_hasRtt && largestLostSent - firstLostSent > 3 * PtoDuration) _bbr.OnPersistentCongestion();
            return;
        }
        if (_lossRate <= LossTolerance)
        {
            // Random loss below the tolerance is not taken as congestion (§9.3).
            _counters.Increment(ref _counters.LossesTolerated);
        }
        else if (largestLostSent > _recoveryStart)
        {
            _cwndBeforeRecovery = _cwnd;
            _ssthreshBeforeRecovery = _ssthresh;
            _recoveryCause = cause;
            _recoveryStart = now;
            _ssthresh = Math.Max(_cwnd / 2, MinWindow);
            _cwnd = _ssthresh;
            _counters.Increment(ref _counters.CongestionEvents);
        }
        // Persistent congestion (RFC 9002 §7.6, simplified): losses spanning more than 3 PTOs.
        if (_hasRtt && largestLostSent - firstLostSent > 3 * PtoDuration) _cwnd = MinWindow;
    }

    // ---- timers (§7.4, §9.2) ----

    internal void OnTimer(long now)
    {
        if (IsClosed || !IsEstablished) return;
        if (now - _lastReceive > _ep.Options.IdleTimeout.Ticks / 10)
        {
            CloseLocked(5, "idle timeout", sendClose: false);
            return;
        }
        if (_mtuProbing && now >= _mtuProbeDeadline)
        {
            // Unanswered: the path does not carry it (or it was lost); a few more tries, then keep the base size.
            _mtuProbing = false;
            if (++_mtuProbeAttempts >= MtuProbeAttempts) _mtuDone = true;
            else _mtuNextProbe = now + MtuRetryUs;
        }
        OnPathTimer(now);
        if (_lossTime != 0 && now >= _lossTime) DetectLoss(now);
        else if (PtoAt is long pto && now >= pto)
        {
            _ptoCount++;
            _probes = 2;
            _counters.Increment(ref _counters.ProbeTimeouts);
            bool queued = false;
            for (int i = 0; i < _sent.Count; i++)
            {
                ref var p = ref _sent[i];
                if (p.Done || !p.InFlight || !p.AckEliciting) continue;
                if (p.Stream is not null || p.Control.Type != 0) { Requeue(ref p, p.Number); queued = true; }
                break;
            }
            if (!queued) _pingPending = true;
            _lastAckElicitingSent = now; // the backoff runs from here
        }
        if (_streams.Count > 0 && now - _lastSend > _ep.Options.KeepAlive.Ticks / 10) _pingPending = true;
    }

    private long? PtoAt => _bytesInFlight > 0 ? _lastAckElicitingSent + Math.Min(PtoDuration << Math.Min(_ptoCount, 16), MaxPtoUs) : null;

    /// <summary>The backed-off PTO never exceeds 2 s, so a path that comes back is probed soon (§9.2).</summary>
    private const long MaxPtoUs = 2_000_000;

    /// <summary>Sends a PING soon (after the local address changed, §7.1).</summary>
    internal void QueuePing()
    {
        _pingPending = true;
        _ep.RequestFlush(this);
    }

    /// <summary>The earliest time this connection needs the driver again.</summary>
    internal long NextWake(long now)
    {
        if (IsClosed) return long.MaxValue;
        if (!IsEstablished) return IsInitiator ? Math.Min(HandshakeResendAt, HandshakeDeadline) : long.MaxValue;
        long t = _lastReceive + _ep.Options.IdleTimeout.Ticks / 10;
        if (_ackDeadline != 0) t = Math.Min(t, _ackDeadline);
        t = Math.Min(t, PathWake);
        if (_mtuProbing) t = Math.Min(t, _mtuProbeDeadline);
        else if (!_mtuDone) t = Math.Min(t, Math.Max(_mtuNextProbe, now));
        if (_lossTime != 0) t = Math.Min(t, _lossTime);
        else if (PtoAt is long pto) t = Math.Min(t, pto);
        if (_streams.Count > 0) t = Math.Min(t, _lastSend + _ep.Options.KeepAlive.Ticks / 10);
        if (HasElicitingWork && _bytesInFlight + _maxPacket <= Cwnd && _tokens < 0)
            t = Math.Min(t, now + (long)Math.Ceiling(-_tokens / PacingRate));
        return t;
    }

    private bool HasElicitingWork => _pingPending || _control.Count > 0 || _sendQueue.Count > 0 || _datagrams.Count > 0;

    /// <summary>Bytes per microsecond: 1.25 × window / smoothed RTT (§9.3).</summary>
    private double PacingRate => _bbr?.PacingRate ?? 1.25 * _cwnd / Math.Max(_srtt, 100);

    private bool PacingAllows(long now)
    {
        double burst = Math.Max(10.0 * MaxPacket, PacingRate * 2000);
        _tokens = Math.Min(burst, _tokens + (now - _tokensTime) * PacingRate);
        _tokensTime = now;
        return _tokens >= 0;
    }
}
