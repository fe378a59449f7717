using System.Buffers;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// Frames (spec/turn.md §5.2) arriving in a byte stream in pieces: bytes are appended, whole frames
/// taken out in order. Holds up to two of the largest frames, in a pooled buffer that its owner
/// returns with <see cref="Release"/> once nothing writes any more.
/// </summary>
internal sealed class FrameBuffer(string source)
{
    private readonly byte[] _buffer = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private int _start, _end, _released;

    /// <summary>Appends what fits of <paramref name="data"/> (after moving what is left to the front); returns the rest.</summary>
    public ReadOnlyMemory<byte> Append(ReadOnlyMemory<byte> data)
    {
        if (_start > 0)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        int n = Math.Min(data.Length, _buffer.Length - _end);
        data.Span[..n].CopyTo(_buffer.AsSpan(_end));
        _end += n;
        return data[n..];
    }

    /// <summary>
    /// Takes the next whole frame; false when more bytes are needed. <paramref name="frame"/> and
    /// <paramref name="payload"/> stay valid until the next <see cref="Append"/>. A malformed frame
    /// throws <see cref="IOException"/>: the stream is unusable.
    /// </summary>
    public bool TryTake(out DatagramFrameType type, out PeerAddress peer, out Memory<byte> frame, out Memory<byte> payload)
    {
        int length = DatagramFrame.TryParse(_buffer.AsSpan(_start, _end - _start), out type, out peer, out var range);
        if (length < 0) throw new IOException($"malformed datagram frame from {source}");
        if (length == 0)
        {
            frame = payload = default;
            return false;
        }
        frame = _buffer.AsMemory(_start, length);
        payload = frame[range];
        _start += length;
        return true;
    }

    /// <summary>Returns the buffer to the pool; once.</summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0) ArrayPool<byte>.Shared.Return(_buffer);
    }
}
