using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Hosting;
using PtHost.Transports.Jet;

namespace PtHost;

/// <summary>
/// <c>pthost relay jet --listen IP:PORT [--config FILE] [--loglevel LEVEL]</c> (spec/jet.md §5.1).
/// Prints one line <c>LISTEN jet ip:port [tcp=ip:port] [tls=ip:port] [wss=ip:port]</c> on stdout
/// once every listener is bound; exits 0 on SIGTERM/SIGINT, 64 on bad arguments, 78 on a bad
/// configuration file, 69 when an address cannot be bound.
/// </summary>
internal static class JetRelayCommand
{
    public static async Task<int> RunAsync(string[] args)
    {
        IPEndPoint? listen = null;
        string? configFile = null;
        var level = LogLevel.Information;
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            if (name is "--help" or "-h") return RelayCommand.Help();
            if (i + 1 >= args.Length) return RelayCommand.UsageError($"{name} needs a value");
            string value = args[++i];
            switch (name)
            {
                case "--listen":
                    if (!Contract.Destination.TryParse(value, out var d) || d.Address is null)
                        return RelayCommand.UsageError($"--listen \"{value}\" is not IP:PORT");
                    listen = new IPEndPoint(d.Address, d.Port);
                    break;
                case "--config":
                    configFile = value;
                    break;
                case "--loglevel":
                    if (Configuration.PtConfig.TryParseLogLevel(value) is not { } parsed) return RelayCommand.UsageError($"--loglevel \"{value}\" is not one of error, warning, notice, info, debug, trace, none");
                    level = parsed;
                    break;
                default:
                    return RelayCommand.UsageError($"unknown option \"{name}\"");
            }
        }

        var options = JetRelayOptions.ForListen(listen ?? new IPEndPoint(IPAddress.Loopback, JetRelayOptions.DefaultPort));
        if (configFile is not null)
        {
            try
            {
                string full = Path.GetFullPath(configFile);
                options = JetRelayOptions.Parse(await File.ReadAllTextAsync(full).ConfigureAwait(false), options, Path.GetDirectoryName(full)!);
                if (listen is not null) options = options with { Listen = listen }; // the command line wins
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
                Console.Error.WriteLine($"pthost: relay jet: configuration {configFile}: {e.Message}");
                return ExitCodes.Config;
            }
        }

        using var loggers = LoggerFactory.Create(b => Program.ConfigureLogging(b, level));
        var log = loggers.CreateLogger("PtHost.Relay.Jet");
        var relay = new JetRelay(options, loggers, b => Program.ConfigureLogging(b, level));
        try
        {
            await relay.StartAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or IOException || e.InnerException is SocketException)
        {
            Console.Error.WriteLine($"pthost: relay jet: cannot listen: {e.Message}");
            await relay.DisposeAsync().ConfigureAwait(false);
            return ExitCodes.Unavailable;
        }

        // Registered now, before the LISTEN line: a signal right after it is handled.
        var stop = RelayCommand.WaitForStopSignalAsync();

        string line = $"LISTEN jet {relay.HttpEndPoint}"
            + (relay.TcpEndPoint is { } t ? $" tcp={t}" : "")
            + (relay.TlsEndPoint is { } s ? $" tls={s}" : "")
            + (relay.WssEndPoint is { } w ? $" wss={w}" : "");
        await Console.Out.WriteLineAsync(line).ConfigureAwait(false);
        await Console.Out.FlushAsync().ConfigureAwait(false);

        await stop.ConfigureAwait(false);
        log.LogInformation("signal received; closing the listeners");
        relay.LogStats();
        await relay.DisposeAsync().ConfigureAwait(false);
        return ExitCodes.Ok;
    }
}
