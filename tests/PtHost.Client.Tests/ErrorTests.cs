using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace PtHost.Client.Tests;

/// <summary>spec/adapters.md §2.6 as the .NET package reports it (§5.6).</summary>
public sealed class ErrorTests
{
    [Fact]
    public async Task ConfigurationErrorCarriesPthostsLineAndKey()
    {
        var e = await Assert.ThrowsAsync<PtHostConfigurationException>(() => PtHostClient.StartAsync(
            new JsonObject { ["transports"] = new JsonArray("plain"), ["bogus"] = 1 }, Support.Options()));
        Assert.Equal(78, e.ExitCode);
        Assert.Equal("bogus", e.Key);
        Assert.Contains("config key 'bogus'", e.Message, StringComparison.Ordinal);
        Assert.Empty(Support.ChildPthosts());
    }

    [Fact]
    public async Task AdapterRefusesAConflictingRoleAndExitOnStdinCloseFalse()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => PtHostClient.StartAsync("""{"role": "server", "transports": ["plain"]}""", Support.Options()));
        await Assert.ThrowsAsync<ArgumentException>(() => PtHostClient.StartAsync("""{"transports": ["plain"], "exit-on-stdin-close": false}""", Support.Options()));
        await Assert.ThrowsAsync<FileNotFoundException>(() => PtHostClient.StartAsync("""{"transports": ["plain"]}""",
            new PtHostOptions { Executable = "/nonexistent/pthost" }));
    }

    [Fact]
    public async Task CmethodErrorIsRaisedForThatTransportOnly()
    {
        await using var server = await Support.FreePlainServerAsync();
        var config = Support.PlainClient(server.EndPoint);
        config["transports"] = new JsonArray("plain", "zephyr");
        ((JsonObject)config["options"]!)["zephyr"] = new JsonObject { ["relay"] = "127.0.0.1:1" };
        await using var client = await PtHostClient.StartAsync(config, Support.Options());

        Assert.Equal(["plain"], client.Transports);
        var e = await Assert.ThrowsAsync<TransportStartException>(() => client.ConnectAsync("zephyr", null, "127.0.0.1", 9));
        Assert.Equal("zephyr", e.Transport);
        Assert.StartsWith("CMETHOD-ERROR zephyr: ", e.Message, StringComparison.Ordinal);
        Assert.Contains("serverPin", e.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task SmethodErrorFailsTheServerStart()
    {
        var e = await Assert.ThrowsAsync<TransportStartException>(() => PtHostServer.ProxyAsync("zephyr",
            new JsonObject { ["relay"] = "127.0.0.1:1" }, ["127.0.0.1"], options: Support.Options()));
        Assert.Equal("zephyr", e.Transport);
        Assert.StartsWith("SMETHOD-ERROR zephyr: ", e.Message, StringComparison.Ordinal);
        Assert.Empty(Support.ChildPthosts());
    }

    [Fact]
    public async Task SocksRepliesBecomeTypedErrors()
    {
        await using var server = await PtHostServer.ProxyAsync("plain", null, ["127.0.0.2"], options: Support.Options());
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());

        // Not in the server's allow list: 02.
        var notAllowed = await Assert.ThrowsAsync<SocksException>(() => client.ConnectAsync("plain", null, "127.0.0.1", 80));
        Assert.Equal(0x02, notAllowed.Reply);
        Assert.Equal(SocketError.AccessDenied, notAllowed.SocketErrorCode);

        // Settings the transport does not know: 13.
        var invalid = await Assert.ThrowsAsync<SocksException>(() => client.ConnectAsync("plain", new JsonObject { ["no-such-setting"] = 1 }, "127.0.0.2", 80));
        Assert.Equal(0x13, invalid.Reply);
        Assert.Equal(SocketError.InvalidArgument, invalid.SocketErrorCode);
    }

    [Fact]
    public async Task RefusedDestinationIsReply05()
    {
        await using var server = await Support.FreePlainServerAsync();
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        // A bound socket that does not listen: connecting to it is refused.
        using var closed = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closed.Bind(new IPEndPoint(IPAddress.Loopback, 0));

        var e = await Assert.ThrowsAsync<SocksException>(() => client.ConnectAsync("plain", null, (IPEndPoint)closed.LocalEndPoint!));
        Assert.Equal(0x05, e.Reply);
        Assert.Equal(SocketError.ConnectionRefused, e.SocketErrorCode);
    }

    [Fact]
    public async Task KilledPthostFailsLaterCallsAndOpenStreams()
    {
        await using var echo = new EchoServer();
        await using var server = await Support.FreePlainServerAsync();
        var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        await using var stream = await client.ConnectAsync("plain", null, "127.0.0.1", echo.Port);
        await stream.WriteAsync(new byte[] { 1 });
        await stream.ReadExactlyAsync(new byte[1]);

        System.Diagnostics.Process.GetProcessById(client.ProcessId).Kill();
        await Eventually.TrueAsync(() => client.Error is not null, "the adapter saw pthost exit");

        Assert.Equal(137, client.Error!.ExitCode);
        await Assert.ThrowsAsync<PtHostDiedException>(async () => await stream.ReadExactlyAsync(new byte[16]));
        await Assert.ThrowsAsync<PtHostExitedException>(() => client.ConnectAsync("plain", null, "127.0.0.1", echo.Port));
        await Assert.ThrowsAsync<PtHostExitedException>(() => client.GetStatsAsync());
        await client.DisposeAsync();
    }
}
