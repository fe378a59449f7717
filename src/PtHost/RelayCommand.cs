using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using PtHost.Hosting;
using PtHost.Transports.Zephyr;

namespace PtHost;

/// <summary>
/// <c>pthost relay NAME ...</c>: runs a relay service in the foreground. Prints one line
/// <c>LISTEN NAME ip:port</c> on stdout once listening (spec/zephyr.md §5), logs to stderr,
/// exits 0 on SIGTERM/SIGINT, 64 on bad arguments, 69 when the address cannot be bound.
/// </summary>
public static class RelayCommand
{
    public const string Usage = """
        usage: pthost relay zephyr [--listen IP:PORT] [--bind-timeout SECONDS] [--peer-timeout SECONDS]
                                   [--max-connections N] [--max-per-source N] [--stats-interval SECONDS]
                                   [--loglevel LEVEL]
               pthost relay asport --listen IP:PORT --config FILE [--loglevel LEVEL]
               pthost relay jet --listen IP:PORT [--config FILE] [--loglevel LEVEL]
        """;

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length == 0) return UsageError("relay needs a NAME (known: zephyr, jet, asport)");
        return args[0] switch
        {
            "zephyr" => await RunZephyrAsync(args[1..]).ConfigureAwait(false),
            "jet" => await JetRelayCommand.RunAsync(args[1..]).ConfigureAwait(false), // spec/jet.md §5.1
            "asport" => await AsportRelayCommand.RunAsync(args[1..]).ConfigureAwait(false),
            "--help" or "-h" => Help(),
            _ => UsageError($"no relay named \"{args[0]}\" (known: zephyr, jet, asport)"),
        };
    }

    /// <summary>
    /// Completes at the first SIGTERM or SIGINT; both are handled (no default termination), so a relay
    /// closes its listeners and exits 0 itself. The handlers are registered before this returns.
    /// </summary>
    internal static async Task WaitForStopSignalAsync()
    {
        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true; // we exit ourselves, with code 0
            stop.TrySetResult();
        }
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        await stop.Task.ConfigureAwait(false);
    }

    internal static int Help()
    {
        Console.Error.WriteLine(Usage);
        return ExitCodes.Ok;
    }

    private static async Task<int> RunZephyrAsync(string[] args)
    {
        var options = new ZephyrRelayOptions();
        var level = LogLevel.Information;
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            if (name is "--help" or "-h") return Help();
            if (i + 1 >= args.Length) return UsageError($"{name} needs a value");
            string value = args[++i];
            switch (name)
            {
                case "--listen":
                    // Strict IP literals, as in the configuration (spec/ipc.md §3.5).
                    if (!Contract.Destination.TryParse(value, out var listen) || listen.Address is null)
                        return UsageError($"--listen \"{value}\" is not IP:PORT");
                    options = options with { Listen = new IPEndPoint(listen.Address, listen.Port) };
                    break;
                case "--bind-timeout":
                    if (!TryParseSeconds(value, out var bind)) return UsageError($"--bind-timeout \"{value}\" is not a positive number of seconds");
                    options = options with { BindTimeout = bind };
                    break;
                case "--peer-timeout":
                    if (!TryParseSeconds(value, out var peer)) return UsageError($"--peer-timeout \"{value}\" is not a positive number of seconds");
                    options = options with { PeerTimeout = peer };
                    break;
                case "--stats-interval":
                    if (!TryParseSeconds(value, out var every)) return UsageError($"--stats-interval \"{value}\" is not a positive number of seconds");
                    options = options with { StatsInterval = every };
                    break;
                case "--max-connections":
                    if (!TryParseCount(value, out int max)) return UsageError($"--max-connections \"{value}\" is not a positive integer");
                    options = options with { MaxConnections = max };
                    break;
                case "--max-per-source":
                    if (!TryParseCount(value, out int perSource)) return UsageError($"--max-per-source \"{value}\" is not a positive integer");
                    options = options with { MaxPerSource = perSource };
                    break;
                case "--loglevel":
                    if (Configuration.PtConfig.TryParseLogLevel(value) is not { } parsed) return UsageError($"--loglevel \"{value}\" is not one of error, warning, notice, info, debug, trace, none");
                    level = parsed;
                    break;
                default:
                    return UsageError($"unknown option \"{name}\"");
            }
        }

        using var loggers = LoggerFactory.Create(b => Program.ConfigureLogging(b, level));
        var log = loggers.CreateLogger("PtHost.Relay.Zephyr");
        var relay = new ZephyrRelay(options, log);
        try
        {
            relay.Start();
        }
        catch (SocketException e)
        {
            Console.Error.WriteLine($"pthost: relay zephyr: cannot listen on {options.Listen}: {e.Message}");
            return ExitCodes.Unavailable;
        }

        // Registered now, before the LISTEN line: a signal right after it is handled.
        var stop = RelayCommand.WaitForStopSignalAsync();

        var stdout = new Lock();
        void Print(string line)
        {
            lock (stdout)
            {
                Console.Out.WriteLine(line);
                Console.Out.Flush();
            }
        }
        Print($"LISTEN zephyr {relay.LocalEndPoint}");
        // spec/zephyr.md §4.7: STATUS lines every stats interval, and one more at shutdown.
        var status = new Timer(_ => Print(StatusLine(relay.GetStats())), null, options.StatsInterval, options.StatsInterval);

        await stop.ConfigureAwait(false);
        log.LogInformation("signal received; closing the listener");
        await status.DisposeAsync().ConfigureAwait(false);
        await relay.DisposeAsync().ConfigureAwait(false);
        relay.LogStats();
        Print(StatusLine(relay.GetStats()));
        return ExitCodes.Ok;
    }

    /// <summary>The relay's STATUS line (spec/zephyr.md §4.7).</summary>
    public static string StatusLine(ZephyrRelayStats s) => string.Create(CultureInfo.InvariantCulture,
        $"STATUS TRANSPORT=zephyr CONNECTIONS={s.Connections} BOUND-PAIRS={s.BoundPairs} ACCEPTED={s.Accepted} REFUSED-BY-LIMITS={s.RefusedByLimits} BINDINGS={s.Bindings} BIND-FAILURES={s.BindFailures} TIMEOUTS={s.Timeouts} BYTES={s.Bytes}");

    private static bool TryParseSeconds(string s, out TimeSpan value)
    {
        value = default;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || !(seconds > 0) || seconds > 86_400) return false;
        value = TimeSpan.FromSeconds(seconds);
        return true;
    }

    private static bool TryParseCount(string s, out int value) =>
        int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out value) && value > 0;

    internal static int UsageError(string message)
    {
        // One line: the error. (The usage text is printed by --help.)
        Console.Error.WriteLine("pthost: relay: " + message);
        return ExitCodes.Usage;
    }
}
