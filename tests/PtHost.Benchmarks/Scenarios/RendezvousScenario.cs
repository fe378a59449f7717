using System.Net;
using System.Text.Json.Nodes;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// Issue 19: SOCKS CONNECT to the success reply (which waits for the server's preamble reply, the
/// first byte from the far side) through zephyr whose offer and answer cross a real
/// <c>pthost relay rendezvous</c> (spec/rendezvous.md), against zephyr with the harness carrying
/// CMESSAGE/SMESSAGE lines, in the same repetition. Target: p50 and p99 at most 1.5 × stdio.
/// </summary>
public sealed class RendezvousScenario : IScenario
{
    public string Name => "rendezvous";
    public string Title => "Zephyr set-up latency: signals through the rendezvous against stdio";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        int sessions = Math.Max(200, ctx.ConnTotal / 10);
        const int inFlight = 8;
        var stdioP50 = new Figure { Key = "rendezvous_stdio_p50_ms", Label = $"zephyr CONNECT to reply, stdio signals, p50 ({sessions}, {inFlight} in flight)", Unit = "ms" };
        var stdioP99 = new Figure { Key = "rendezvous_stdio_p99_ms", Label = "p99", Unit = "ms", Indent = 1 };
        var rvP50 = new Figure { Key = "rendezvous_p50_ms", Label = "zephyr CONNECT to reply, signals through the rendezvous, p50", Unit = "ms" };
        var rvP99 = new Figure { Key = "rendezvous_p99_ms", Label = "p99", Unit = "ms", Indent = 1 };
        var ratioP50 = new Figure { Key = "rendezvous_ratio_p50", Label = "rendezvous / stdio, p50", Unit = "", Indent = 1, Goal = Goal.AtMost, Target = 1.5 };
        var ratioP99 = new Figure { Key = "rendezvous_ratio_p99", Label = "rendezvous / stdio, p99", Unit = "", Indent = 1, Goal = Goal.AtMost, Target = 1.5 };
        run.Add(stdioP50, stdioP99, rvP50, rvP99, ratioP50, ratioP99);
        var raw = run.Raw("rendezvous");
        try
        {
            await using var relay = await ZephyrRelayChild.StartAsync(ctx.PtHost).ConfigureAwait(false);
            var rendezvous = Child.Start("pthost relay rendezvous", ctx.PtHost, ["relay", "rendezvous", "--listen", "127.0.0.1:0", "--loglevel", "warning", "--rate", "100000", "--burst", "100000"], Chain.ExtraEnvFor(null));
            await using var rendezvousLifetime = rendezvous.ConfigureAwait(false);
            var (_, listen) = await rendezvous.WaitForLineAsync(l => l.StartsWith("LISTEN rendezvous ", StringComparison.Ordinal), Chain.StartTimeout).ConfigureAwait(false);
            var signals = new JsonObject { ["rendezvous"] = "http://" + listen.Split(' ')[2], ["secret"] = PtHost.Net.Signals.RendezvousKeys.NewSecret() };
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                async Task<(double P50, double P99)> MeasureAsync(string kind, JsonObject? route)
                {
                    ctx.Say($"rendezvous {rep + 1}/{ctx.Repetitions}: {kind}, {sessions} sessions");
                    await using var echo = new EchoServer(recordLimit: 0);
                    await using var chain = await ZephyrChain.StartAsync(ctx.PtHost, ctx.NewStateDir(), relay.EndPoint, route).ConfigureAwait(false);
                    var r = await Measurements.ConnRateAsync(chain.Socks, echo.EndPoint, [chain.Client.Pid, chain.Server.Pid], sessions, inFlight, warmup: 50).ConfigureAwait(false);
                    raw.Add(ScenarioRun.Tag(r.Raw, kind, rep));
                    if (r.Failures > 0) throw new InvalidOperationException($"{kind}: {r.Failures} sessions failed: {r.FirstError}");
                    return (r.P50Ms, r.P99Ms);
                }
                var stdio = await MeasureAsync("stdio", null).ConfigureAwait(false);
                var rv = await MeasureAsync("rendezvous", signals).ConfigureAwait(false);
                stdioP50.Samples.Add(stdio.P50);
                stdioP99.Samples.Add(stdio.P99);
                rvP50.Samples.Add(rv.P50);
                rvP99.Samples.Add(rv.P99);
                ratioP50.Samples.Add(rv.P50 / stdio.P50);
                ratioP99.Samples.Add(rv.P99 / stdio.P99);
            }
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }
}
