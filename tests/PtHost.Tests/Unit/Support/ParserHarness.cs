using System.Buffers;
using PtHost.Socks;

namespace PtHost.Tests.Unit.Support;

/// <summary>One parse step over a buffer (out values are captured by the lambda).</summary>
internal delegate ParseStatus ParseStep(ref ReadOnlySequence<byte> buffer);

internal static class ParserHarness
{
    /// <summary>Every proper prefix of <paramref name="message"/>, in every segment shape, is Incomplete and consumes nothing.</summary>
    public static void AssertEveryProperPrefixIsIncomplete(byte[] message, ParseStep step)
    {
        for (int n = 0; n < message.Length; n++)
        {
            foreach (var (shape, sequence) in Sequences.AllShapes(message[..n]))
            {
                var buffer = sequence;
                var status = step(ref buffer);
                Assert.True(status == ParseStatus.Incomplete, $"prefix of {n}/{message.Length} bytes ({shape}) gave {status}");
                Assert.True(buffer.Start.Equals(sequence.Start) && buffer.Length == sequence.Length,
                    $"prefix of {n}/{message.Length} bytes ({shape}) consumed bytes although Incomplete");
            }
        }
    }

    /// <summary>Runs <paramref name="step"/> on <paramref name="bytes"/> in every segment shape; <paramref name="check"/> sees status and the unconsumed rest.</summary>
    public static void ForEveryShape(byte[] bytes, ParseStep step, Action<string, ParseStatus, byte[]> check)
    {
        foreach (var (shape, sequence) in Sequences.AllShapes(bytes))
        {
            var buffer = sequence;
            var status = step(ref buffer);
            check(shape, status, buffer.ToArray());
        }
    }
}
