using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Hosting;
using PtHost.Quic;
using PtHost.Transports.Asport;

namespace PtHost;

/// <summary>
/// <c>pthost relay asport --listen IP:PORT --config FILE</c> (spec/asport.md §5): the ASPORT
/// server. Prints <c>LISTEN asport ip:port sha256=HEX</c> on stdout once listening (HEX is the
/// certificate pin for clients), logs to stderr; exits 0 on SIGTERM/SIGINT, 64 on bad
/// arguments, 78 on a bad configuration file, 69 when QUIC is unavailable or the port cannot be bound.
/// </summary>
public static class AsportRelayCommand
{
    public static async Task<int> RunAsync(string[] args)
    {
        IPEndPoint? listen = null;
        string? config = null;
        var level = LogLevel.Information;
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            if (i + 1 >= args.Length) return UsageError($"{name} needs a value");
            string value = args[++i];
            switch (name)
            {
                case "--listen":
                    if (!Contract.Destination.TryParse(value, out var d) || d.Address is null) return UsageError($"--listen \"{value}\" is not IP:PORT");
                    listen = new IPEndPoint(d.Address, d.Port);
                    break;
                case "--config":
                    config = value;
                    break;
                case "--loglevel":
                    if (Configuration.PtConfig.TryParseLogLevel(value) is not { } parsed) return UsageError($"--loglevel \"{value}\" is not one of error, warning, notice, info, debug, trace, none");
                    level = parsed;
                    break;
                default:
                    return UsageError($"unknown option \"{name}\"");
            }
        }
        if (listen is null || config is null) return UsageError("asport needs --listen IP:PORT and --config FILE");
        if (QuicLibrary.UnavailableReason is { } why)
        {
            Console.Error.WriteLine("pthost: relay asport: " + why);
            return ExitCodes.Unavailable;
        }
        AsportRelayOptions options;
        try { options = AsportRelayOptions.Load(config) with { Listen = listen }; }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"pthost: relay asport: {config}: {e.Message}");
            return ExitCodes.Config;
        }

        using var loggers = LoggerFactory.Create(b => Program.ConfigureLogging(b, level));
        var log = loggers.CreateLogger("PtHost.Relay.Asport");
        var server = new AsportRelay(options, log);
        try
        {
            server.Start();
        }
        catch (SocketException e)
        {
            Console.Error.WriteLine($"pthost: relay asport: cannot listen on {listen}: {e.Message}");
            return ExitCodes.Unavailable;
        }

        // Registered now, before the LISTEN line: a signal right after it is handled.
        var stop = RelayCommand.WaitForStopSignalAsync();

        await Console.Out.WriteLineAsync($"LISTEN asport {server.LocalEndPoint} sha256={Convert.ToHexString(options.Certificate.Sha256).ToLowerInvariant()}").ConfigureAwait(false);
        await Console.Out.FlushAsync().ConfigureAwait(false);

        await stop.ConfigureAwait(false);
        log.LogInformation("signal received; closing");
        await server.DisposeAsync().ConfigureAwait(false);
        server.LogStats();
        return ExitCodes.Ok;
    }

    private static int UsageError(string message)
    {
        Console.Error.WriteLine("pthost: relay asport: " + message);
        return ExitCodes.Usage;
    }
}
