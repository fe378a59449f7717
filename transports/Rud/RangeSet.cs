namespace PtHost.Transports.Rud;

/// <summary>Disjoint, sorted half-open ranges [Start, End) of stream offsets; small by construction.</summary>
internal sealed class RangeSet
{
    private readonly List<(ulong Start, ulong End)> _ranges = [];

    public int Count => _ranges.Count;

    public bool IsEmpty => _ranges.Count == 0;

    public (ulong Start, ulong End) First => _ranges[0];

    public (ulong Start, ulong End) this[int i] => _ranges[i];

    public void Clear() => _ranges.Clear();

    public void Add(ulong start, ulong end)
    {
        if (end <= start) return;
        int i = 0;
        while (i < _ranges.Count && _ranges[i].End < start) i++;
        int j = i;
        while (j < _ranges.Count && _ranges[j].Start <= end)
        {
            start = Math.Min(start, _ranges[j].Start);
            end = Math.Max(end, _ranges[j].End);
            j++;
        }
        _ranges.RemoveRange(i, j - i);
        _ranges.Insert(i, (start, end));
    }

    public void Remove(ulong start, ulong end)
    {
        if (end <= start) return;
        for (int i = 0; i < _ranges.Count; i++)
        {
            var (s, e) = _ranges[i];
            if (e <= start) continue;
            if (s >= end) break;
            _ranges.RemoveAt(i);
            if (e > end) _ranges.Insert(i, (end, e));
            if (s < start) { _ranges.Insert(i, (s, start)); i++; }
            i--;
        }
    }

    /// <summary>End of the range that contains <paramref name="x"/>, or <paramref name="x"/> when none does.</summary>
    public ulong ContiguousFrom(ulong x)
    {
        foreach (var (s, e) in _ranges)
        {
            if (s > x) break;
            if (e > x) return e;
        }
        return x;
    }
}
