using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// The client process's end of one UDP association whose frames travel one per datagram over a
/// datagram carrier the subclass provides (asport: a UDP socket to the public port; rud: a datagram
/// stream). OPEN at 0, 0.25, 0.75, 1.75, 3.75, 5.75 … s until RELAYED (or CLOSE) within
/// <see cref="OpenTimeout"/>; then DATA and CHECK out, DATA, ALLOWED and REFUSED in; OPEN
/// <c>[::]:1</c> every <see cref="KeepaliveInterval"/>, and <see cref="DeadAfter"/> without a
/// frame from the server ends it, as do CLOSE and the carrier's end. A DATA frame longer than the
/// association's maximum or the caller's buffer is dropped and counted, never cut.
/// </summary>
public abstract class DatagramCarrierAssociation : IAssociation
{
    public static readonly TimeSpan OpenTimeout = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan KeepaliveInterval = TimeSpan.FromSeconds(15);
    public static readonly TimeSpan DeadAfter = TimeSpan.FromSeconds(60);

    private readonly byte[] _in;
    private readonly ConcurrentDictionary<PeerAddress, TaskCompletionSource<bool>> _checks = new();
    private readonly CancellationTokenSource _stop = new();
    private Task _keepalive = Task.CompletedTask;
    private long _lastHeard = Environment.TickCount64;
    private long _sent, _received, _tooLarge, _notSent, _malformed;
    private int _ended;

    /// <param name="maxFrame">The largest datagram the carrier moves (the receive buffer's size).</param>
    protected DatagramCarrierAssociation(ILogger log, int maxFrame)
    {
        Log = log;
        _in = GC.AllocateUninitializedArray<byte>(maxFrame);
    }

    protected ILogger Log { get; }

    public abstract int MaxDatagramSize { get; }

    public PeerAddress RelayedAddress { get; private set; }

    /// <summary>Datagrams sent, received, dropped as too large, not sent (carrier full or failing), malformed.</summary>
    public (long Sent, long Received, long TooLarge, long NotSent, long Malformed) Counts =>
        (Interlocked.Read(ref _sent), Interlocked.Read(ref _received), Interlocked.Read(ref _tooLarge), Interlocked.Read(ref _notSent), Interlocked.Read(ref _malformed));

    /// <summary>Sends one frame as one datagram; false when it did not go (dropped, as UDP would).</summary>
    protected abstract bool SendDatagram(ReadOnlySpan<byte> frame);

    /// <summary>Receives one datagram into <paramref name="into"/>: its length, 0 for nothing usable (try again), -1 when the carrier is gone.</summary>
    protected abstract ValueTask<int> ReceiveDatagramAsync(Memory<byte> into, CancellationToken cancellationToken);

    /// <summary>Releases the carrier and logs the summary; called once when the session ends.</summary>
    protected abstract void OnClosed();

    /// <summary>Logs why the session ended (an end the client process did not ask for).</summary>
    protected abstract void LogEnded(string why);

    /// <summary>
    /// Sends OPEN until RELAYED (true), CLOSE (false) or the carrier's end (null); throws
    /// <see cref="OperationCanceledException"/> when nothing came within <see cref="OpenTimeout"/>
    /// (or <paramref name="cancellationToken"/> fired). On success the keep-alive starts.
    /// </summary>
    protected async Task<bool?> ExchangeOpenAsync(CancellationToken cancellationToken)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(OpenTimeout);
        var answer = AwaitRelayedAsync(limit.Token);
        var delay = TimeSpan.FromMilliseconds(250);
        while (!answer.IsCompleted)
        {
            SendDatagram(DatagramFrame.OpenFrame);
            await Task.WhenAny(answer, Task.Delay(delay, limit.Token)).ConfigureAwait(false);
            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(2).Ticks));
        }
        bool? opened = await answer.ConfigureAwait(false);
        if (opened == true) _keepalive = KeepaliveLoopAsync(_stop.Token);
        return opened;
    }

    private async Task<bool?> AwaitRelayedAsync(CancellationToken ct)
    {
        while (true)
        {
            int n = await ReceiveDatagramAsync(_in, ct).ConfigureAwait(false);
            if (n < 0) return null;
            if (n == 0) continue;
            if (!DatagramFrame.TryReadDatagram(_in.AsSpan(0, n), out var type, out var peer, out _))
            {
                Interlocked.Increment(ref _malformed);
                continue;
            }
            if (type == DatagramFrameType.Relayed)
            {
                RelayedAddress = peer;
                Volatile.Write(ref _lastHeard, Environment.TickCount64);
                return true;
            }
            if (type == DatagramFrameType.Close) return false;
        }
    }

    public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length > MaxDatagramSize)
        {
            Interlocked.Increment(ref _tooLarge); // cannot cross in one datagram of the carrier
            return ValueTask.CompletedTask;
        }
        byte[] frame = ArrayPool<byte>.Shared.Rent(DatagramFrame.HeaderLength(peer) + payload.Length);
        try
        {
            int n = DatagramFrame.Write(frame, DatagramFrameType.Data, peer, payload.Span);
            if (SendDatagram(frame.AsSpan(0, n))) Interlocked.Increment(ref _sent);
            else Interlocked.Increment(ref _notSent); // a full buffer or queue, an ICMP error: dropped as UDP would
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>CHECK, repeated at 0.5, 1.5, 3.5, 5.5 … s until ALLOWED or REFUSED, within <see cref="CheckTimeout"/>.</summary>
    public async ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken)
    {
        var answer = _checks.GetOrAdd(peer, _ => new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
        byte[] frame = new byte[DatagramFrame.HeaderLength(peer)];
        DatagramFrame.Write(frame, DatagramFrameType.Check, peer, default);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stop.Token);
        limit.CancelAfter(CheckTimeout);
        var delay = TimeSpan.FromMilliseconds(500);
        try
        {
            while (true)
            {
                SendDatagram(frame);
                try { return await answer.Task.WaitAsync(delay, limit.Token).ConfigureAwait(false); }
                catch (TimeoutException) { }
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(2).Ticks));
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return false; // no answer in time, or the session ended: treated as refused
        }
        finally
        {
            _checks.TryRemove(new KeyValuePair<PeerAddress, TaskCompletionSource<bool>>(peer, answer));
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (true)
        {
            if (Volatile.Read(ref _ended) != 0) return (default, -1);
            int n = await ReceiveDatagramAsync(_in, cancellationToken).ConfigureAwait(false);
            if (n < 0)
            {
                Terminate("the carrier closed");
                return (default, -1);
            }
            if (n == 0) continue;
            if (!DatagramFrame.TryReadDatagram(_in.AsSpan(0, n), out var type, out var peer, out var payload))
            {
                Interlocked.Increment(ref _malformed);
                continue;
            }
            Volatile.Write(ref _lastHeard, Environment.TickCount64);
            switch (type)
            {
                case DatagramFrameType.Data:
                    var bytes = _in.AsSpan(payload);
                    if (bytes.Length > buffer.Length || bytes.Length > MaxDatagramSize)
                    {
                        Interlocked.Increment(ref _malformed); // above the session's maximum: never cut, dropped
                        continue;
                    }
                    bytes.CopyTo(buffer.Span);
                    Interlocked.Increment(ref _received);
                    return (peer, bytes.Length);
                case DatagramFrameType.Allowed:
                case DatagramFrameType.Refused:
                    if (_checks.TryGetValue(peer, out var answer)) answer.TrySetResult(type == DatagramFrameType.Allowed);
                    break;
                case DatagramFrameType.Close:
                    Terminate("the server process ended the association");
                    return (default, -1);
            }
            // RELAYED (the answer to a keep-alive OPEN) and unknown types: nothing more to do.
        }
    }

    private async Task KeepaliveLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(KeepaliveInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                if (Environment.TickCount64 - Volatile.Read(ref _lastHeard) > (long)DeadAfter.TotalMilliseconds)
                {
                    Terminate($"nothing heard from the server process for {DeadAfter.TotalSeconds:0} s");
                    return;
                }
                SendDatagram(DatagramFrame.KeepaliveFrame);
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>Ends the session: a pending receive returns -1, checks answer false, later datagrams are dropped.</summary>
    protected void Terminate(string why)
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        LogEnded(why);
        Close();
    }

    private void Close()
    {
        _stop.Cancel();
        foreach (var c in _checks.Values) c.TrySetResult(false);
        OnClosed();
    }

    /// <summary>Sends CLOSE twice (best effort: the server frees the association now, not after its idle time-out) and ends the session.</summary>
    public virtual async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _ended, 1) == 0)
        {
            SendDatagram(DatagramFrame.CloseFrame);
            SendDatagram(DatagramFrame.CloseFrame);
            Close();
        }
        await _keepalive.ConfigureAwait(false);
    }
}
