using System.Net;
using System.Net.Sockets;
using PtHost.Contract;

namespace PtHost.Embedded;

/// <summary>
/// UDP through a transport in process (spec/adapters.md §5.8): the transport's own UDP association (spec/turn.md §5),
/// with no TURN listener, no TURN messages and no socket of the host's, in <see cref="UdpClient"/>'s shape. The
/// first datagram to a peer asks the server process whether it may be reached (what a TURN permission does,
/// spec/turn.md §5.3); a refusal is a <see cref="TransportConnectException"/> with <see cref="ConnectFailure.NotAllowed"/>.
/// Sends are serialized, and so are receives (the association takes one sender and one receiver).
/// </summary>
public sealed class EmbeddedUdpClient : IAsyncDisposable
{
    /// <summary>Peers the server process allowed, remembered up to this many (then asked again).</summary>
    private const int PermittedLimit = 4096;
    private readonly IAssociation _association;
    private readonly TransportCounters _counters;
    private readonly SemaphoreSlim _sending = new(1, 1);
    private readonly SemaphoreSlim _receiving = new(1, 1);
    private readonly HashSet<PeerAddress> _permitted = [];
    private readonly byte[] _received;
    private int _disposed;

    internal EmbeddedUdpClient(IAssociation association, TransportCounters counters)
    {
        _association = association;
        _counters = counters;
        _received = GC.AllocateUninitializedArray<byte>(association.MaxDatagramSize);
    }

    /// <summary>Where the server process sends from (TURN's relayed address); port 0 when the transport does not say.</summary>
    public IPEndPoint RelayedEndPoint => _association.RelayedAddress.ToEndPoint();

    /// <summary>The largest datagram the association carries.</summary>
    public int MaxDatagramSize => _association.MaxDatagramSize;

    /// <summary>Sends one datagram to <paramref name="peer"/> (it may be dropped under congestion, as UDP's may).</summary>
    public async ValueTask SendAsync(ReadOnlyMemory<byte> datagram, IPEndPoint peer, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        ArgumentNullException.ThrowIfNull(peer);
        if (datagram.Length > _association.MaxDatagramSize)
            throw new ArgumentException($"a datagram is at most {_association.MaxDatagramSize} bytes over this transport", nameof(datagram));
        var address = PeerAddress.From(peer);
        await _sending.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (!_permitted.Contains(address))
            {
                if (!await _association.CheckPeerAsync(address, ct).ConfigureAwait(false))
                    throw new TransportConnectException(ConnectFailure.NotAllowed, $"the server process refuses UDP to {peer}");
                if (_permitted.Count >= PermittedLimit) _permitted.Clear();
                _permitted.Add(address);
            }
            await _association.SendAsync(address, datagram, ct).ConfigureAwait(false);
        }
        finally
        {
            _sending.Release();
        }
        _counters.AddBytesOut(datagram.Length);
    }

    /// <summary>
    /// Receives the next datagram into <paramref name="buffer"/> (at least <see cref="MaxDatagramSize"/> bytes for
    /// any datagram to fit; a longer one is cut): its sender and length, length -1 once the association has ended.
    /// </summary>
    public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        await _receiving.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var (peer, n) = buffer.Length >= _received.Length
                ? await _association.ReceiveAsync(buffer, ct).ConfigureAwait(false)
                : await ReceiveCutAsync(buffer, ct).ConfigureAwait(false);
            if (n > 0) _counters.AddBytesIn(n);
            return (peer, n);
        }
        finally
        {
            _receiving.Release();
        }
    }

    private async ValueTask<(PeerAddress, int)> ReceiveCutAsync(Memory<byte> buffer, CancellationToken ct)
    {
        var (peer, n) = await _association.ReceiveAsync(_received, ct).ConfigureAwait(false);
        if (n < 0) return (peer, n);
        n = Math.Min(n, buffer.Length);
        _received.AsSpan(0, n).CopyTo(buffer.Span);
        return (peer, n);
    }

    /// <summary>The next datagram as <see cref="UdpClient.ReceiveAsync(CancellationToken)"/> returns it; an <see cref="IOException"/> once the association has ended.</summary>
    public async ValueTask<UdpReceiveResult> ReceiveAsync(CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        await _receiving.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var (peer, n) = await _association.ReceiveAsync(_received, ct).ConfigureAwait(false);
            if (n < 0) throw new IOException("the UDP association ended (the server process closed it)");
            _counters.AddBytesIn(n);
            return new UdpReceiveResult(_received.AsSpan(0, n).ToArray(), peer.ToEndPoint());
        }
        finally
        {
            _receiving.Release();
        }
    }

    /// <summary>Ends the association; a second call does nothing.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _counters.SessionClosed();
        await _association.DisposeAsync().ConfigureAwait(false);
    }
}
