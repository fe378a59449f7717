using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>The reassembly range set (spec/rud.md §8.3) against a bit-per-offset model.</summary>
public class RangeSetTests
{
    [Fact]
    public void Random_adds_removes_and_subtractions_match_a_bitmap()
    {
        var rng = new Random(2024);
        for (int round = 0; round < 200; round++)
        {
            const int Size = 300;
            var set = new RangeSet();
            var model = new bool[Size];
            for (int op = 0; op < 200; op++)
            {
                int a = rng.Next(Size), b = Math.Min(Size, a + rng.Next(1, 20));
                switch (rng.Next(4))
                {
                    case 0:
                    case 1:
                    {
                        int predicted = set.CountAfterAdd((ulong)a, (ulong)b);
                        set.Add((ulong)a, (ulong)b);
                        for (int i = a; i < b; i++) model[i] = true;
                        Assert.Equal(predicted, set.Count);
                        break;
                    }
                    case 2:
                        set.Remove((ulong)a, (ulong)b);
                        for (int i = a; i < b; i++) model[i] = false;
                        break;
                    default:
                    {
                        var other = new RangeSet();
                        other.Add((ulong)a, (ulong)b);
                        other.Add((ulong)b + 3, (ulong)b + 9);
                        ulong lo = (ulong)rng.Next(Size), hi = lo + (ulong)rng.Next(40);
                        set.Subtract(other, lo, hi);
                        for (int i = 0; i < Size; i++)
                            if ((ulong)i >= lo && (ulong)i < hi && ((i >= a && i < b) || ((ulong)i >= (ulong)b + 3 && (ulong)i < (ulong)b + 9))) model[i] = false;
                        break;
                    }
                }
                Check(set, model);
            }
        }
    }

    private static void Check(RangeSet set, bool[] model)
    {
        // Ranges are sorted, disjoint, non-touching, and cover exactly the model's set bits.
        var covered = new bool[model.Length];
        for (int r = 0; r < set.Count; r++)
        {
            var (s, e) = set[r];
            Assert.True(s < e);
            if (r > 0) Assert.True(set[r - 1].End < s, "ranges touch or overlap");
            for (ulong i = s; i < e; i++) covered[i] = true;
        }
        Assert.Equal(model, covered);
        for (int x = 0; x < model.Length; x++)
        {
            int end = x;
            while (end < model.Length && model[end]) end++;
            Assert.Equal((ulong)end, set.ContiguousFrom((ulong)x));
        }
    }
}
