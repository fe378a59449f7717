using System.Diagnostics;
using System.Text.Json.Nodes;

namespace PtHost.Client.Tests;

/// <summary>No orphan pthost (spec/adapters.md §2.4): after dispose, after an exception, after the application is killed.</summary>
public sealed class LifetimeTests
{
    [Fact]
    public async Task DisposeEndsPthost()
    {
        var client = await PtHostClient.StartAsync("""{"transports": ["plain"]}""", Support.Options());
        int pid = client.ProcessId;
        Assert.False(Support.Gone(pid));
        await client.DisposeAsync();
        Assert.True(Support.Gone(pid));
        Assert.Empty(Support.ChildPthosts());
    }

    [Fact]
    public async Task AnExceptionInTheApplicationsScopeEndsPthost()
    {
        int pid = 0;
        await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            await using var client = await PtHostClient.StartAsync("""{"transports": ["plain"]}""", Support.Options());
            pid = client.ProcessId;
            throw new InvalidOperationException("the application failed");
        });
        Assert.NotEqual(0, pid);
        Assert.True(Support.Gone(pid));
    }

    [Fact]
    public async Task AStartThatTimesOutKillsPthost()
    {
        // A start limit shorter than pthost's start-up: the adapter kills the child it launched.
        await Assert.ThrowsAsync<PtHostException>(() => PtHostClient.StartAsync("""{"transports": ["plain"]}""",
            new PtHostOptions { Executable = PtHostExecutable.Path, StartTimeout = TimeSpan.FromMilliseconds(1) }));
        Assert.Empty(Support.ChildPthosts());
    }

    [Fact]
    public async Task StatsAreCurrentWithinOneSecond()
    {
        await using var echo = new EchoServer();
        await using var server = await Support.FreePlainServerAsync();
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        var before = (await client.GetStatsAsync())["plain"];
        await using (var stream = await client.ConnectAsync("plain", null, "127.0.0.1", echo.Port))
        {
            await stream.WriteAsync(new byte[1000]);
            await stream.ReadExactlyAsync(new byte[1000]);
        }
        var started = Stopwatch.StartNew();
        var after = (await client.GetStatsAsync())["plain"];
        Assert.True(started.Elapsed < TimeSpan.FromSeconds(1), $"STATUS answered in {started.Elapsed}");
        Assert.Equal(before.Opened + 1, after.Opened);
        Assert.True(after.BytesIn - before.BytesIn >= 1000 && after.BytesOut - before.BytesOut >= 1000, $"{before} -> {after}");
    }

    [Fact]
    public async Task SignalsAreCheckedByKind()
    {
        await using var client = await PtHostClient.StartAsync("""{"transports": ["plain"]}""", Support.Options());
        await Assert.ThrowsAsync<ArgumentException>(() => client.SendSignalAsync("CMESSAGE plain x"));
        await Assert.ThrowsAsync<ArgumentException>(() => client.SendSignalAsync("SMESSAGE plain a\rb"));
        _ = new JsonObject();
    }
}
