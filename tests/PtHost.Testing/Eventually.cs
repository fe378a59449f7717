using System.Diagnostics;

namespace PtHost.Testing;

/// <summary>
/// Waits for a condition instead of sleeping a fixed time: polls until it holds and fails naming
/// what was awaited. The poll interval is the only pause; a wait ends as soon as the condition does.
/// </summary>
public static class Eventually
{
    public static readonly TimeSpan DefaultWithin = TimeSpan.FromSeconds(20);

    /// <summary>How long between two looks at a condition.</summary>
    public static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(50);

    /// <summary>Polls <paramref name="condition"/> until it is true; a <see cref="TimeoutException"/> naming <paramref name="what"/> after <paramref name="within"/> (default 20 s).</summary>
    /// <param name="poll">Between two looks (default <see cref="PollInterval"/>).</param>
    public static Task TrueAsync(Func<bool> condition, string what, TimeSpan? within = null, TimeSpan? poll = null) =>
        TrueAsync(() => Task.FromResult(condition()), what, within, poll);

    /// <inheritdoc cref="TrueAsync(Func{bool}, string, TimeSpan?, TimeSpan?)"/>
    public static async Task TrueAsync(Func<Task<bool>> condition, string what, TimeSpan? within = null, TimeSpan? poll = null)
    {
        if (!await HoldsWithinAsync(condition, within ?? DefaultWithin, poll).ConfigureAwait(false))
            throw new TimeoutException($"waited {(within ?? DefaultWithin).TotalSeconds:0.#} s in vain for {what}");
    }

    /// <summary>Polls <paramref name="condition"/> until it is true or <paramref name="within"/> has passed; whether it held (for tests that report the miss themselves).</summary>
    public static Task<bool> HoldsWithinAsync(Func<bool> condition, TimeSpan within, TimeSpan? poll = null) =>
        HoldsWithinAsync(() => Task.FromResult(condition()), within, poll);

    /// <inheritdoc cref="HoldsWithinAsync(Func{bool}, TimeSpan, TimeSpan?)"/>
    /// <param name="poll">Between two looks (default <see cref="PollInterval"/>); longer where each look is an attempt that costs something.</param>
    public static async Task<bool> HoldsWithinAsync(Func<Task<bool>> condition, TimeSpan within, TimeSpan? poll = null)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (await condition().ConfigureAwait(false)) return true;
            if (clock.Elapsed >= within) return false;
            await Task.Delay(poll ?? PollInterval).ConfigureAwait(false);
        }
    }

    /// <summary>Reads <paramref name="read"/> until <paramref name="done"/> accepts the value or <paramref name="within"/> has passed; returns the last value read (the caller asserts on it, with its own message).</summary>
    public static async Task<T> ValueAsync<T>(Func<T> read, Func<T, bool> done, TimeSpan within)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            T value = read();
            if (done(value) || clock.Elapsed >= within) return value;
            await Task.Delay(PollInterval).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A counter at rest: reads <paramref name="read"/> until it has kept one value for <paramref name="quiet"/>
    /// (a writer blocked by back-pressure, sockets of sessions that are being torn down, datagrams still in
    /// flight); returns that value. A <see cref="TimeoutException"/> if it is still moving after <paramref name="within"/>.
    /// </summary>
    public static async Task<long> StableAsync(Func<long> read, TimeSpan quiet, TimeSpan within, string what)
    {
        var clock = Stopwatch.StartNew();
        long value = read();
        var since = clock.Elapsed;
        while (clock.Elapsed - since < quiet)
        {
            if (clock.Elapsed >= within) throw new TimeoutException($"{what} still changing after {within.TotalSeconds:0.#} s (last {value})");
            await Task.Delay(PollInterval).ConfigureAwait(false);
            long now = read();
            if (now != value)
            {
                value = now;
                since = clock.Elapsed;
            }
        }
        return value;
    }

    /// <summary>
    /// Whether <paramref name="task"/> ends within <paramref name="within"/>; it keeps running otherwise. For a
    /// bounded wait whose bound the caller explains (a retransmission interval, a timeout under test).
    /// </summary>
    public static async Task<bool> CompletesWithinAsync(Task task, TimeSpan within)
    {
        try
        {
            await task.WaitAsync(within).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException) when (!task.IsCompleted) { return false; }
        catch (Exception) when (task.IsCompleted) { return true; } // completed with a fault: the caller awaits it and sees why
    }
}
