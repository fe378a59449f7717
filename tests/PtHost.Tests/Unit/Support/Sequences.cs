using System.Buffers;

namespace PtHost.Tests.Unit.Support;

/// <summary>A segment of a hand-built multi-segment <see cref="ReadOnlySequence{T}"/>.</summary>
internal sealed class TestSegment : ReadOnlySequenceSegment<byte>
{
    public TestSegment(ReadOnlyMemory<byte> memory) => Memory = memory;

    public TestSegment Append(ReadOnlyMemory<byte> memory)
    {
        var next = new TestSegment(memory) { RunningIndex = RunningIndex + Memory.Length };
        Next = next;
        return next;
    }
}

internal static class Sequences
{
    /// <summary>One sequence whose segments are exactly <paramref name="parts"/> (empty parts allowed).</summary>
    public static ReadOnlySequence<byte> FromSegments(params byte[][] parts)
    {
        if (parts.Length == 0) return ReadOnlySequence<byte>.Empty;
        // Copy each part so a parser cannot "see" neighbouring bytes through a shared array.
        var first = new TestSegment(parts[0].ToArray());
        var last = first;
        for (int i = 1; i < parts.Length; i++) last = last.Append(parts[i].ToArray());
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    /// <summary>The bytes split into one-byte segments.</summary>
    public static ReadOnlySequence<byte> OneBytePerSegment(byte[] bytes) =>
        FromSegments(bytes.Select(b => new[] { b }).ToArray());

    /// <summary>The bytes split in two at <paramref name="at"/>, with empty segments around the cut.</summary>
    public static ReadOnlySequence<byte> SplitAt(byte[] bytes, int at, bool withEmptySegments = false) =>
        withEmptySegments
            ? FromSegments([], bytes[..at], [], [], bytes[at..], [])
            : FromSegments(bytes[..at], bytes[at..]);

    /// <summary>Every way of presenting <paramref name="bytes"/>: one array, every two-way split (with and without empty segments), one byte per segment.</summary>
    public static IEnumerable<(string Name, ReadOnlySequence<byte> Sequence)> AllShapes(byte[] bytes)
    {
        yield return ("single", new ReadOnlySequence<byte>(bytes.ToArray()));
        for (int at = 0; at <= bytes.Length; at++)
        {
            yield return ($"split@{at}", SplitAt(bytes, at));
            yield return ($"split@{at}+empty", SplitAt(bytes, at, withEmptySegments: true));
        }
        if (bytes.Length > 0) yield return ("one-byte-segments", OneBytePerSegment(bytes));
    }

    public static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();
}
