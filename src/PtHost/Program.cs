using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Hosting;
using PtHost.Ipc;
using PtHost.Plugins;

namespace PtHost;

public static class Program
{
    public const string Usage = """
        usage: pthost '<json configuration>'        run as a PT 2.0 client or server (spec/ipc.md)
               pthost --config FILE                 the same, configuration read from FILE
               pthost generate-config TRANSPORT [--plugindir DIR]
                                                    print {"client": {...}, "server": {...}} options
               pthost demo                          start a server and a client on loopback and fetch through them
               pthost relay zephyr --listen IP:PORT [--bind-timeout S] [--peer-timeout S]
                                   [--max-connections N] [--max-per-source N] [--loglevel L]
                                                    run the Zephyr relay service (spec/zephyr.md)
               pthost relay jet --listen IP:PORT [--config FILE] [--loglevel L]
                                                    run the JET relay service (spec/jet.md)
               pthost --version | --help
        """;

    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0 && PtConfig.IsManaged(Environment.GetEnvironmentVariables()))
            return await RunManagedAsync(Environment.GetEnvironmentVariables()).ConfigureAwait(false);
        if (args.Length == 0)
        {
            Console.Error.WriteLine("pthost: no configuration given");
            Console.Error.WriteLine(Usage);
            return ExitCodes.Usage;
        }
        switch (args[0])
        {
            case "--help" or "-h":
                Console.Error.WriteLine(Usage);
                return ExitCodes.Ok;
            case "--version":
                Console.Out.WriteLine("pthost " + VersionText);
                return ExitCodes.Ok;
            case "generate-config":
                return GenerateConfig(args);
            case "demo":
                return await Demo.DemoCommand.RunAsync(args[1..]).ConfigureAwait(false);
            case "relay":
                return await RelayCommand.RunAsync(args[1..]).ConfigureAwait(false);
        }

        string json;
        if (args[0] == "--config")
        {
            if (args.Length != 2) return UsageError("--config takes exactly one FILE");
            try { json = await File.ReadAllTextAsync(args[1]).ConfigureAwait(false); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                IpcWriter.ForStdout().EnvError($"config file {args[1]} cannot be read");
                Console.Error.WriteLine($"pthost: cannot read {args[1]}: {e.Message}");
                return ExitCodes.Config;
            }
        }
        else if (args.Length == 1 && args[0].TrimStart().StartsWith('{')) json = args[0];
        else return UsageError($"unexpected argument \"{args[0]}\"");

        PtConfig config;
        var ipc = IpcWriter.ForStdout();
        try
        {
            config = PtConfig.Parse(json);
            if (!PtConfig.IsSupportedVersion(config.PtVersion))
            {
                ipc.VersionError();
                Console.Error.WriteLine($"pthost: config key 'ptversion': \"{config.PtVersion}\" is not supported (supported: 2)");
                return ExitCodes.Config;
            }
        }
        catch (ConfigException e)
        {
            ipc.EnvError(e.Message);
            Console.Error.WriteLine("pthost: " + e.Message);
            return ExitCodes.Config;
        }
        try { Directory.CreateDirectory(config.StateDirectory); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ipc.EnvError($"config key 'state': cannot create {config.StateDirectory}");
            Console.Error.WriteLine($"pthost: config key 'state': cannot create {config.StateDirectory}: {e.Message}");
            return ExitCodes.CantCreate;
        }
        return await RunAsync(config, ipc).ConfigureAwait(false);
    }

    /// <summary>
    /// PT 1.0 managed mode (spec/ipc.md §10): started by tor with TOR_PT_* variables and no arguments.
    /// Errors are the pt-spec lines (VERSION-ERROR, ENV-ERROR, PROXY-ERROR) and exit 78.
    /// </summary>
    private static async Task<int> RunManagedAsync(System.Collections.IDictionary env)
    {
        var ipc = IpcWriter.ForStdout();
        PtConfig config;
        IReadOnlyList<string> ignored;
        try { config = PtConfig.FromTorEnvironment(env, new TransportRegistry().Names.ToList(), out ignored); }
        catch (NoVersionException e)
        {
            ipc.VersionError();
            Console.Error.WriteLine("pthost: " + e.Message);
            return ExitCodes.Config;
        }
        catch (EnvironmentException e)
        {
            ipc.EnvError(e.Message);
            Console.Error.WriteLine("pthost: " + e.Message);
            return ExitCodes.Config;
        }
        if (env["PTHOST_LOGLEVEL"] is string levelText && PtConfig.TryParseLogLevel(levelText) is { } level) config = config.WithLogLevel(level);
        try { Directory.CreateDirectory(config.StateDirectory); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ipc.EnvError($"TOR_PT_STATE_LOCATION: cannot create {config.StateDirectory}: {e.Message}");
            Console.Error.WriteLine($"pthost: TOR_PT_STATE_LOCATION: cannot create {config.StateDirectory}: {e.Message}");
            return ExitCodes.CantCreate;
        }
        if (config.UpstreamProxy is { } proxy && Hosting.OutboundDialer.ValidateProxy(proxy) is { } proxyProblem)
        {
            // pt-spec §3.3.3: VERSION first, then PROXY-ERROR, then exit.
            ipc.Version("1");
            ipc.ProxyError(proxyProblem);
            Console.Error.WriteLine("pthost: TOR_PT_PROXY: " + proxyProblem);
            return ExitCodes.Config;
        }
        foreach (string name in ignored) Console.Error.WriteLine($"pthost: transport \"{name}\" is not one pthost has; ignored");
        return await RunAsync(config, ipc).ConfigureAwait(false);
    }

    public static string VersionText => typeof(Program).Assembly.GetName().Version?.ToString(3) ?? "0";

    private static int UsageError(string message)
    {
        Console.Error.WriteLine("pthost: " + message);
        Console.Error.WriteLine(Usage);
        return ExitCodes.Usage;
    }

    private static async Task<int> RunAsync(PtConfig config, IpcWriter ipc)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true, ApplicationName = "pthost" });
        ConfigureLogging(builder.Logging, config.LogLevel);
        builder.Services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
        builder.Services.AddSingleton<IHostLifetime, Microsoft.Extensions.Hosting.Internal.ConsoleLifetime>();
        builder.Services.AddSingleton(config);
        builder.Services.AddSingleton(ipc);
        builder.Services.AddSingleton(sp => new SignalRouter(config.Role, ipc, sp.GetRequiredService<ILogger<SignalRouter>>(), available: config.IpcVersion != 1));
        builder.Services.AddSingleton<TransportRegistry>();
        builder.Services.AddSingleton<HostRuntime>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<HostRuntime>());
        using var host = builder.Build();

        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        var log = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("PtHost");
        var router = host.Services.GetRequiredService<SignalRouter>();
        // Open every transport's signal queue before stdin is read: a message may arrive before the transport starts.
        foreach (string t in config.Transports) router.For(t);
        var runtime = host.Services.GetRequiredService<HostRuntime>();
        var stdin = new StdinReader(Console.OpenStandardInput(), router, host.Services.GetRequiredService<ILogger<StdinReader>>())
        {
            StatusRequested = config.IpcVersion == 1 ? null : runtime.ReportStatusNow,
        };
        stdin.Start(() =>
        {
            if (!config.ExitOnStdinClose) return;
            log.LogInformation("stdin closed; shutting down");
            lifetime.StopApplication();
        });
        // The first SIGINT stops accepting and lets sessions drain (the host's lifetime does that);
        // the second ends them at once (spec/ipc.md §9).
        int interrupts = 0;
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, context =>
        {
            context.Cancel = true;
            if (Interlocked.Increment(ref interrupts) == 1) lifetime.StopApplication();
            else
            {
                log.LogInformation("second SIGINT: ending open sessions now");
                runtime.AbortSessions();
            }
        });
        using var parentWatch = config.IpcVersion == 1 ? ParentWatch.Start(lifetime, log) : null;
        try
        {
            await host.RunAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            log.LogCritical(e, "pthost failed");
            return ExitCodes.Software;
        }
        return runtime.FailureExitCode ?? ExitCodes.Ok;
    }

    /// <summary>Logs go to stderr only, one line each (stdout belongs to the IPC).</summary>
    public static void ConfigureLogging(ILoggingBuilder logging, LogLevel level)
    {
        logging.ClearProviders();
        logging.SetMinimumLevel(level);
        logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
            o.ColorBehavior = LoggerColorBehavior.Disabled;
        });
        logging.Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
    }

    private static int GenerateConfig(string[] args)
    {
        if (args.Length is not (2 or 4) || (args.Length == 4 && args[2] != "--plugindir"))
            return UsageError("usage: generate-config TRANSPORT [--plugindir DIR]");
        string name = args[1];
        using var loggers = LoggerFactory.Create(b => ConfigureLogging(b, LogLevel.Warning));
        var registry = new TransportRegistry();
        if (args.Length == 4)
        {
            if (!Directory.Exists(args[3])) return UsageError($"--plugindir \"{args[3]}\" is not a directory");
            registry.LoadPlugins(args[3], loggers.CreateLogger("PtHost"));
        }
        var transport = registry.Create(name);
        if (transport is null) return UsageError($"no transport named \"{name}\" (known: {string.Join(", ", registry.Names.Order())})");
        string state = Path.Combine(Directory.GetCurrentDirectory(), name);
        var ipc = new IpcWriter(TextWriter.Null);
        var signals = new SignalRouter(Role.Server, ipc, loggers.CreateLogger<SignalRouter>());
        var context = new TransportEnvironment(name, null, state, signals.For(name), new Net.DirectDialer(), loggers, new TransportCounters());
        try
        {
            // Foreign code (a plugin) may throw anything here: one clear line and exit 70.
            var server = transport.CreateServerFactory(context);
            var generated = server.GenerateConfiguration();
            var result = new JObject { ["client"] = generated.Client, ["server"] = generated.Server };
            Console.Out.WriteLine(result.ToString(Formatting.Indented));
            return ExitCodes.Ok;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"pthost: {name}: cannot generate a configuration: {e.Message}");
            return ExitCodes.Software;
        }
    }
}
