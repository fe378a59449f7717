using System.Buffers;

namespace PtHost.Reliability.Support;

/// <summary>
/// A seeded, deterministic mutation fuzzer over byte messages: bit flips, interesting byte values,
/// byte insertion and deletion, truncation, duplication, length-field boundary values (u8, u16 BE,
/// u32 BE) and splicing of two valid messages. The same seed gives the same inputs on every run.
/// </summary>
public sealed class Mutator(int seed)
{
    private readonly Random _rng = new(seed);

    public Random Random => _rng;

    private static readonly byte[] InterestingBytes = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x08, 0x09, 0x7F, 0x80, 0x81, 0xFE, 0xFF, (byte)'\\', (byte)'=', (byte)';', (byte)'"', (byte)'{', (byte)'}', (byte)':', (byte)'['];
    private static readonly ushort[] InterestingU16 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 261, 262, 263, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF];
    private static readonly uint[] InterestingU32 = [0, 1, 2, 0xFF, 0xFFFF, 65535, 65536, 65537, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF];

    /// <summary>The number of distinct mutation operators.</summary>
    public const int Operators = 11;

    /// <summary>Picks a seed from <paramref name="seeds"/> and applies 1–4 mutations.</summary>
    public byte[] Next(IReadOnlyList<byte[]> seeds)
    {
        var data = new List<byte>(seeds[_rng.Next(seeds.Count)]);
        int rounds = 1 + _rng.Next(4);
        for (int i = 0; i < rounds; i++) Mutate(data, seeds);
        return [.. data];
    }

    private void Mutate(List<byte> d, IReadOnlyList<byte[]> seeds)
    {
        int op = _rng.Next(Operators);
        switch (op)
        {
            case 0 when d.Count > 0: // bit flip
                { int p = _rng.Next(d.Count); d[p] ^= (byte)(1 << _rng.Next(8)); break; }
            case 1 when d.Count > 0: // interesting byte
                d[_rng.Next(d.Count)] = InterestingBytes[_rng.Next(InterestingBytes.Length)]; break;
            case 2 when d.Count > 0: // random byte
                d[_rng.Next(d.Count)] = (byte)_rng.Next(256); break;
            case 3: // insert 1–8 random bytes
                {
                    int p = _rng.Next(d.Count + 1), n = 1 + _rng.Next(8);
                    for (int i = 0; i < n; i++) d.Insert(p, (byte)_rng.Next(256));
                    break;
                }
            case 4 when d.Count > 0: // delete a range
                { int p = _rng.Next(d.Count); d.RemoveRange(p, Math.Min(d.Count - p, 1 + _rng.Next(8))); break; }
            case 5 when d.Count > 0: // truncate
                { int keepLen = _rng.Next(d.Count); d.RemoveRange(keepLen, d.Count - keepLen); break; }
            case 6 when d.Count > 0: // duplicate a range
                {
                    int p = _rng.Next(d.Count), n = Math.Min(d.Count - p, 1 + _rng.Next(16));
                    d.InsertRange(_rng.Next(d.Count + 1), d.GetRange(p, n));
                    break;
                }
            case 7 when d.Count > 0: // u8 length boundary
                d[_rng.Next(d.Count)] = (byte)InterestingU16[_rng.Next(6)]; break;
            case 8 when d.Count >= 2: // u16 BE boundary
                {
                    int p = _rng.Next(d.Count - 1);
                    ushort v = InterestingU16[_rng.Next(InterestingU16.Length)];
                    d[p] = (byte)(v >> 8); d[p + 1] = (byte)v;
                    break;
                }
            case 9 when d.Count >= 4: // u32 BE boundary
                {
                    int p = _rng.Next(d.Count - 3);
                    uint v = InterestingU32[_rng.Next(InterestingU32.Length)];
                    d[p] = (byte)(v >> 24); d[p + 1] = (byte)(v >> 16); d[p + 2] = (byte)(v >> 8); d[p + 3] = (byte)v;
                    break;
                }
            case 10: // splice: a prefix of this message, a suffix of another valid one
                {
                    var other = seeds[_rng.Next(seeds.Count)];
                    int cut = _rng.Next(d.Count + 1), from = _rng.Next(other.Length + 1);
                    d.RemoveRange(cut, d.Count - cut);
                    d.AddRange(other.AsSpan(from).ToArray());
                    break;
                }
            default: // the operator needs more bytes than there are: append one
                d.Add((byte)_rng.Next(256));
                break;
        }
    }

    /// <summary>Mutates a string through its UTF-8 bytes (invalid UTF-8 is replaced by U+FFFD on decoding).</summary>
    public string NextString(IReadOnlyList<string> seeds)
    {
        var bytes = Next(seeds.Select(s => System.Text.Encoding.UTF8.GetBytes(s)).ToList());
        return System.Text.Encoding.UTF8.GetString(bytes);
    }

    /// <summary>The iteration count: <c>$FUZZ_ITERATIONS</c> when set, otherwise <paramref name="ci"/>.</summary>
    public static int Iterations(int ci) =>
        int.TryParse(Environment.GetEnvironmentVariable("FUZZ_ITERATIONS"), out int n) && n > 0 ? n : ci;
}

/// <summary>Builds a <see cref="ReadOnlySequence{T}"/> cut into segments (empty segments included), as a pipe can deliver bytes.</summary>
public static class Segmented
{
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }

    public static ReadOnlySequence<byte> Single(byte[] data) => new(data);

    /// <summary>Cuts <paramref name="data"/> at random places (0 to 4 cuts, some of them empty segments).</summary>
    public static ReadOnlySequence<byte> Random(byte[] data, Random rng)
    {
        int cuts = rng.Next(5);
        var points = new List<int>();
        for (int i = 0; i < cuts; i++) points.Add(rng.Next(data.Length + 1));
        points.Sort();
        // Each segment gets its own array so that a read past a segment's end cannot see the next bytes.
        Segment? first = null, last = null;
        int start = 0;
        foreach (int p in points.Append(data.Length))
        {
            var mem = data.AsSpan(start, p - start).ToArray();
            if (first is null) first = last = new Segment(mem, 0);
            else last = last!.Append(mem);
            start = p;
        }
        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }
}
