namespace PtHost.Transports.Rud;

/// <summary>A reliable frame other than STREAM, kept with the packet that carried it.</summary>
internal struct ControlFrame
{
    public byte Type;       // FrameType.MaxStreamData or FrameType.ResetStream; 0 = none
    public ulong StreamId;
    public ulong Code;
    public ulong Value;     // final size of a reset
}

/// <summary>What one sent packet carried (spec/rud.md §9): enough to requeue its reliable frames.</summary>
internal struct SentPacket
{
    public ulong Number;
    public long SentTime;
    public int Size;
    public bool AckEliciting;
    public bool InFlight;
    public bool Done;        // acknowledged or declared lost
    public bool Lost;        // declared lost (kept a while to notice a late acknowledgement)
    public RudStream? Stream;
    public ulong Offset;
    public int Length;
    public bool Fin;
    public ControlFrame Control;
    // Delivery-rate state when sent (BBR, draft-cheng-iccrg-delivery-rate-estimation).
    public long Delivered;
    public long DeliveredTime;
    public long FirstSentTime;
    public bool AppLimited;
}

/// <summary>Sent packets by consecutive sent index, oldest first; a growable ring of structs.</summary>
internal sealed class SentRing
{
    private SentPacket[] _items = new SentPacket[256];
    private int _head, _count;

    public int Count => _count;

    public ulong FirstNumber => _items[_head].Number;

    public ref SentPacket this[int i] => ref _items[(_head + i) % _items.Length];

    public void Add(in SentPacket p)
    {
        if (_count == _items.Length)
        {
            var bigger = new SentPacket[_items.Length * 2];
            for (int i = 0; i < _count; i++) bigger[i] = _items[(_head + i) % _items.Length];
            _items = bigger;
            _head = 0;
        }
        _items[(_head + _count) % _items.Length] = p;
        _count++;
    }

    /// <summary>The index of packet <paramref name="number"/>, or -1 when it is not kept.</summary>
    public int IndexOf(ulong number)
    {
        if (_count == 0 || number < FirstNumber) return -1;
        ulong i = number - FirstNumber;
        return i < (ulong)_count ? (int)i : -1;
    }

    /// <summary>Drops finished packets from the front; lost ones only once sent before <paramref name="lostCutoff"/>.</summary>
    public void PopDone(long lostCutoff)
    {
        while (_count > 0 && _items[_head].Done && (!_items[_head].Lost || _items[_head].SentTime < lostCutoff))
        {
            _items[_head] = default;
            _head = (_head + 1) % _items.Length;
            _count--;
        }
    }

    public void Clear()
    {
        Array.Clear(_items);
        _head = _count = 0;
    }
}

/// <summary>
/// Received sent indexes: the largest and a 256-packet window below it (spec/rud.md §6.2, §3.1),
/// kept as a 256-bit shift register — bit i set = packet (Largest − i) received — so marking,
/// the replay test and the acknowledgement bitfield are a few word operations, not a walk over
/// 256 packets.
/// </summary>
internal struct ReceivedWindow
{
    public const int Size = 256;
    private ulong _w0, _w1, _w2, _w3;   // bit i of the 256-bit value (w0 = bits 0..63) = Largest - i received
    public ulong Largest;
    public bool Any;

    /// <summary>True for a packet already received or too old to tell (a replay, §6.2).</summary>
    public readonly bool IsReplay(ulong n)
    {
        if (!Any || n > Largest) return false;
        ulong d = Largest - n;
        if (d >= Size) return true;
        ulong w = (d >> 6) switch { 0 => _w0, 1 => _w1, 2 => _w2, _ => _w3 };
        return ((w >> (int)(d & 63)) & 1) != 0;
    }

    public void Mark(ulong n)
    {
        if (!Any)
        {
            Any = true;
            Largest = n;
            _w0 = 1;
            _w1 = _w2 = _w3 = 0;
            return;
        }
        if (n > Largest)
        {
            ShiftUp(n - Largest);
            Largest = n;
            _w0 |= 1;
            return;
        }
        ulong d = Largest - n;
        if (d >= Size) return;
        ulong bit = 1UL << (int)(d & 63);
        switch (d >> 6)
        {
            case 0: _w0 |= bit; break;
            case 1: _w1 |= bit; break;
            case 2: _w2 |= bit; break;
            default: _w3 |= bit; break;
        }
    }

    /// <summary>Moves every bit <paramref name="by"/> places up (older); bits beyond 255 fall out.</summary>
    private void ShiftUp(ulong by)
    {
        if (by >= Size) { _w0 = _w1 = _w2 = _w3 = 0; return; }
        int words = (int)(by >> 6), bits = (int)(by & 63);
        Span<ulong> w = [_w0, _w1, _w2, _w3];
        for (int i = 3; i >= 0; i--)
        {
            int src = i - words;
            ulong v = src >= 0 ? w[src] << bits : 0;
            if (bits != 0 && src - 1 >= 0) v |= w[src - 1] >> (64 - bits);
            w[i] = v;
        }
        _w0 = w[0]; _w1 = w[1]; _w2 = w[2]; _w3 = w[3];
    }

    /// <summary>Writes the acknowledgement bitfield (trailing zero bytes dropped); returns its length.</summary>
    public readonly int WriteBitfield(Span<byte> dest)
    {
        // Output bit i (MSB first in each byte) = packet Largest - 1 - i = register bit i + 1:
        // the register shifted down by one, bits reversed within each byte. Bit 255 would alias
        // the largest itself and stays 0 (nothing shifts into it); packets below 0 were never set.
        Span<ulong> r = [(_w0 >> 1) | (_w1 << 63), (_w1 >> 1) | (_w2 << 63), (_w2 >> 1) | (_w3 << 63), _w3 >> 1];
        int length = 0;
        for (int i = 0; i < 4; i++)
        {
            ulong x = r[i];
            x = ((x >> 1) & 0x5555555555555555UL) | ((x & 0x5555555555555555UL) << 1);
            x = ((x >> 2) & 0x3333333333333333UL) | ((x & 0x3333333333333333UL) << 2);
            x = ((x >> 4) & 0x0F0F0F0F0F0F0F0FUL) | ((x & 0x0F0F0F0F0F0F0F0FUL) << 4);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(dest[(8 * i)..], x);
            if (x != 0) length = 8 * i + 8 - System.Numerics.BitOperations.LeadingZeroCount(x) / 8;
        }
        return length;
    }
}
