using System.Net;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Reliability.Support;

/// <summary>A TURN client that records what the server sends it (for the in-process fuzzer).</summary>
public sealed class RecordingTurnClient(string ip, int port, bool stream = false) : TurnClient(PeerAddress.From(new IPEndPoint(IPAddress.Parse(ip), port)))
{
    private readonly List<byte[]> _sent = [];

    public override bool IsStream => stream;

    public override void Send(ReadOnlySpan<byte> message)
    {
        lock (_sent) _sent.Add(message.ToArray());
    }

    /// <summary>Takes every message sent so far.</summary>
    public List<byte[]> Drain()
    {
        lock (_sent)
        {
            var all = _sent.ToList();
            _sent.Clear();
            return all;
        }
    }
}

/// <summary>
/// An association that accepts everything and never receives: peers with an even port pass the
/// peer check, odd ones are refused (so both 403 and success paths run).
/// </summary>
public sealed class NullDatagramSession : IAssociation
{
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public long Sent;

    public int MaxDatagramSize => 65_000;
    public PeerAddress RelayedAddress { get; } = PeerAddress.From(new IPEndPoint(IPAddress.Parse("198.51.100.1"), 50_000));

    public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref Sent);
        return ValueTask.CompletedTask;
    }

    public ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken) => ValueTask.FromResult(peer.Port % 2 == 0);

    public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        await _closed.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        return (default, -1);
    }

    public ValueTask DisposeAsync()
    {
        _closed.TrySetResult();
        return ValueTask.CompletedTask;
    }
}
