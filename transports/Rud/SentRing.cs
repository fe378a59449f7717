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

/// <summary>Received sent indexes: the largest and a 256-packet window below it (spec/rud.md §6.2, §3.1).</summary>
internal struct ReceivedWindow
{
    public const int Size = 256;
    private ulong _b0, _b1, _b2, _b3;   // bit (n % 256) set = n received, for n in (Largest - 256, Largest]
    public ulong Largest;
    public bool Any;

    private readonly bool Get(ulong n)
    {
        int i = (int)(n % Size);
        ulong w = (i >> 6) switch { 0 => _b0, 1 => _b1, 2 => _b2, _ => _b3 };
        return ((w >> (i & 63)) & 1) != 0;
    }

    private void Set(ulong n, bool v)
    {
        int i = (int)(n % Size);
        ulong bit = 1UL << (i & 63);
        ref ulong w = ref _b0;
        switch (i >> 6) { case 1: w = ref _b1; break; case 2: w = ref _b2; break; case 3: w = ref _b3; break; }
        w = v ? w | bit : w & ~bit;
    }

    /// <summary>True for a packet already received or too old to tell (a replay, §6.2).</summary>
    public readonly bool IsReplay(ulong n) => Any && n <= Largest && (Largest - n >= Size || Get(n));

    public void Mark(ulong n)
    {
        if (!Any)
        {
            Any = true;
            Largest = n;
            _b0 = _b1 = _b2 = _b3 = 0;
            Set(n, true);
            return;
        }
        if (n > Largest)
        {
            if (n - Largest >= Size) _b0 = _b1 = _b2 = _b3 = 0;
            else for (ulong k = Largest + 1; k < n; k++) Set(k, false);
            Largest = n;
        }
        Set(n, true);
    }

    /// <summary>Writes the acknowledgement bitfield (trailing zero bytes dropped); returns its length.</summary>
    public readonly int WriteBitfield(Span<byte> dest)
    {
        int length = 0;
        dest[..RudWire.MaxBitfieldBytes].Clear();
        // The window holds Largest and the 255 below it; bit 255 would alias Largest itself.
        for (int i = 0; i < Size - 1; i++)
        {
            if ((ulong)i >= Largest) break;
            ulong n = Largest - 1 - (ulong)i;
            if (!Get(n)) continue;
            dest[i >> 3] |= (byte)(0x80 >> (i & 7));
            length = (i >> 3) + 1;
        }
        return length;
    }
}
