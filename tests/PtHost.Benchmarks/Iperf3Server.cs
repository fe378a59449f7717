using System.Globalization;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// A one-shot <c>iperf3 -s -1</c> on 127.0.0.1, started before what is measured points at it. iperf3
/// cannot listen on port 0, so it is given a <see cref="PresetPort"/> candidate and started again on a
/// fresh one when it did not come to listen there itself (another program held the port).
/// </summary>
public sealed class Iperf3Server : IAsyncDisposable
{
    private Iperf3Server(Child child, int port)
    {
        Child = child;
        Port = port;
    }

    public Child Child { get; }
    public int Port { get; }

    public static Task<Iperf3Server> StartAsync(string iperf3) => PresetPort.StartAsync(async port =>
    {
        var child = Child.Start("iperf3 -s", iperf3, ["-s", "-1", "-B", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture)], captureAllStdout: true);
        if (await ProcessSockets.WaitTcpListenerAsync(child.Pid, TimeSpan.FromSeconds(10), port).ConfigureAwait(false) is not null)
            return new Iperf3Server(child, port);
        child.Kill();
        await child.DisposeAsync().ConfigureAwait(false);
        return null;
    }, "iperf3 -s");

    /// <summary>After the client's run: the one-shot server ends by itself (killed if it has not within 10 s).</summary>
    public async Task FinishAsync()
    {
        try { await Child.WaitExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
        catch (TimeoutException) { Child.Kill(); }
    }

    public async ValueTask DisposeAsync()
    {
        Child.Kill();
        await Child.DisposeAsync().ConfigureAwait(false);
    }
}
