using System.Buffers;
using System.Threading.Channels;

namespace PtHost.Quic;

/// <summary>The awaiting members (C# forbids await in an unsafe context).</summary>
public sealed partial class QuicConnection
{
    private async ValueTask<QuicStream> OpenStreamAsync(bool bidi, CancellationToken cancellationToken)
    {
        var tcs = new TaskCompletionSource<QuicStream>(TaskCreationOptions.RunContinuationsAsynchronously);
        Endpoint.Post(() =>
        {
            if (State >= ConnState.Closing) tcs.TrySetException(ClosedError());
            else if (!TryOpen(bidi, tcs)) PendingOpens.Enqueue((bidi, tcs));
        });
        using var reg = cancellationToken.Register(() => tcs.TrySetCanceled(cancellationToken));
        return await tcs.Task.ConfigureAwait(false);
    }

    /// <summary>The next stream the peer opened (bidirectional or unidirectional).</summary>
    public async ValueTask<QuicStream> AcceptStreamAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await _accepted.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw ClosedError();
        }
    }

    /// <summary>Copies the next received datagram into <paramref name="buffer"/> (truncating) and returns its length.</summary>
    public async ValueTask<int> ReceiveDatagramAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        (byte[] Buffer, int Length) d;
        try
        {
            d = await _datagramsIn.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw ClosedError();
        }
        var n = Math.Min(d.Length, buffer.Length);
        d.Buffer.AsSpan(0, n).CopyTo(buffer.Span);
        ArrayPool<byte>.Shared.Return(d.Buffer);
        return n;
    }

    public async ValueTask DisposeAsync()
    {
        await CloseAsync().WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
    }
}
