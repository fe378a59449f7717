namespace PtHost.Transports.Rud;

/// <summary>
/// Disjoint, sorted half-open ranges [Start, End) of stream offsets (spec/rud.md §8.3). Positions are
/// found by bisection, so an insertion costs O(log n) comparisons and one block move of the entries
/// after it; callers that take ranges from the peer cap their number (<see cref="CountAfterAdd"/>), so
/// no sequence of frames makes the cost grow without bound.
/// </summary>
internal sealed class RangeSet
{
    private (ulong Start, ulong End)[] _ranges = new (ulong, ulong)[4];
    private int _count;

    public int Count => _count;

    public bool IsEmpty => _count == 0;

    public (ulong Start, ulong End) First => _ranges[0];

    public (ulong Start, ulong End) this[int i] => _ranges[i];

    public void Clear() => _count = 0;

    /// <summary>The index of the first range whose End is at least <paramref name="x"/> (the first that touches or follows x).</summary>
    private int FirstEndingAtOrAfter(ulong x)
    {
        int lo = 0, hi = _count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_ranges[mid].End < x) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>The index of the first range whose End is above <paramref name="x"/> (the first that contains or follows x).</summary>
    private int FirstEndingAfter(ulong x)
    {
        int lo = 0, hi = _count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_ranges[mid].End <= x) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>How many ranges there would be after <see cref="Add"/>(start, end).</summary>
    public int CountAfterAdd(ulong start, ulong end)
    {
        if (end <= start) return _count;
        int i = FirstEndingAtOrAfter(start);
        int j = i;
        while (j < _count && _ranges[j].Start <= end) j++;
        return _count - (j - i) + 1;
    }

    public void Add(ulong start, ulong end)
    {
        if (end <= start) return;
        int i = FirstEndingAtOrAfter(start);
        int j = i;
        while (j < _count && _ranges[j].Start <= end)
        {
            start = Math.Min(start, _ranges[j].Start);
            end = Math.Max(end, _ranges[j].End);
            j++;
        }
        // Replace [i, j) by the one merged range.
        int delta = 1 - (j - i);
        if (delta > 0 && _count + delta > _ranges.Length) Array.Resize(ref _ranges, _ranges.Length * 2);
        if (delta != 0) Array.Copy(_ranges, j, _ranges, j + delta, _count - j);
        _ranges[i] = (start, end);
        _count += delta;
    }

    public void Remove(ulong start, ulong end)
    {
        if (end <= start || _count == 0) return;
        // The ranges that overlap [start, end): from the first ending after start to the last starting before end.
        int i = FirstEndingAfter(start), j = i;
        while (j < _count && _ranges[j].Start < end) j++;
        if (i == j) return;
        // What survives: the part of range i below start, the part of range j-1 above end.
        var (s0, _) = _ranges[i];
        var (_, e1) = _ranges[j - 1];
        int keep = (s0 < start ? 1 : 0) + (e1 > end ? 1 : 0);
        int delta = keep - (j - i);
        if (delta > 0 && _count + delta > _ranges.Length) Array.Resize(ref _ranges, _ranges.Length * 2);
        if (delta != 0) Array.Copy(_ranges, j, _ranges, j + delta, _count - j);
        int at = i;
        if (s0 < start) _ranges[at++] = (s0, start);
        if (e1 > end) _ranges[at] = (end, e1);
        _count += delta;
    }

    /// <summary>Removes from this set the parts of <paramref name="other"/>'s ranges that lie in [start, end).</summary>
    public void Subtract(RangeSet other, ulong start, ulong end)
    {
        for (int i = other.FirstEndingAfter(start); i < other._count && other._ranges[i].Start < end; i++)
            Remove(Math.Max(start, other._ranges[i].Start), Math.Min(end, other._ranges[i].End));
    }

    /// <summary>End of the range that contains <paramref name="x"/>, or <paramref name="x"/> when none does.</summary>
    public ulong ContiguousFrom(ulong x)
    {
        int i = FirstEndingAfter(x);
        return i < _count && _ranges[i].Start <= x && _ranges[i].End > x ? _ranges[i].End : x;
    }
}
