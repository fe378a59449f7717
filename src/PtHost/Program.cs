using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Hosting;
using PtHost.Ipc;
using PtHost.Logging;
using PtHost.Plugins;

namespace PtHost;

/// <summary>
/// The executable: <see cref="CommandLine"/> reads the command line (spec/ipc.md §2); the PT
/// client/server modes and every relay run under one generic host (same logging, same shutdown).
/// </summary>
public static class Program
{
    public static Task<int> Main(string[] args)
    {
        // Every process (client, server, each relay) takes the descriptors it may have (spec/ipc.md §7).
        Net.DescriptorLimit.RaiseToHard();
        return CommandLine.InvokeAsync(args);
    }

    /// <summary>Forms 5 and 6 of spec/ipc.md §2.1: the configuration document from argv or from FILE.</summary>
    internal static async Task<int> RunConfigAsync(string? json, string? file)
    {
        if (file is not null)
        {
            try { json = await File.ReadAllTextAsync(file).ConfigureAwait(false); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                IpcWriter.ForStdout().EnvError($"config file {file} cannot be read");
                Console.Error.WriteLine($"pthost: cannot read {file}: {e.Message}");
                return ExitCodes.Config;
            }
        }

        PtConfig config;
        var ipc = IpcWriter.ForStdout();
        try
        {
            config = PtConfig.Parse(json!);
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
        return CreateStateDirectory(config, ipc, "config key 'state'") ?? await RunAsync(config, ipc).ConfigureAwait(false);
    }

    /// <summary>§2.2 step 3: the state directory; on failure ENV-ERROR naming <paramref name="what"/> and exit 73, else null.</summary>
    private static int? CreateStateDirectory(PtConfig config, IpcWriter ipc, string what)
    {
        try { Directory.CreateDirectory(config.StateDirectory); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ipc.EnvError($"{what}: cannot create {config.StateDirectory}");
            Console.Error.WriteLine($"pthost: {what}: cannot create {config.StateDirectory}: {e.Message}");
            return ExitCodes.CantCreate;
        }
        return null;
    }

    /// <summary>
    /// The dispatcher command line (spec/ipc.md §12.1), mapped to <paramref name="document"/>: validated as any
    /// configuration (§3, errors as §3.3, exit 78), then run as forms 6 and 7 are.
    /// </summary>
    internal static async Task<int> RunDispatcherAsync(JObject document, string announcedVersion, System.Net.IPEndPoint? extOrPort, string? authCookie)
    {
        var ipc = IpcWriter.ForStdout();
        PtConfig config;
        try { config = PtConfig.FromObject(document).WithDispatcher(announcedVersion, extOrPort, authCookie); }
        catch (ConfigException e)
        {
            ipc.EnvError(e.Message);
            Console.Error.WriteLine("pthost: " + e.Message);
            return ExitCodes.Config;
        }
        return CreateStateDirectory(config, ipc, "-state") ?? await RunAsync(config, ipc).ConfigureAwait(false);
    }

    /// <summary>
    /// PT 1.0 managed mode (spec/ipc.md §10): started by tor with TOR_PT_* variables and no arguments.
    /// Errors are the pt-spec lines (VERSION-ERROR, ENV-ERROR, PROXY-ERROR) and exit 78.
    /// </summary>
    internal static async Task<int> RunManagedAsync(System.Collections.IDictionary env)
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
        if (env["PTHOST_LOGLEVEL"] is string levelText && PtConfig.TryParseLogLevel(levelText) is { } level) config = config.WithLogging(level, config.UnsafeLogging);
        // PTHOST_UNSAFE_LOGGING=1 (exactly "1") keeps addresses in the logs (spec/ipc.md §4.11, §10.2).
        if (env["PTHOST_UNSAFE_LOGGING"] is "1") config = config.WithLogging(config.LogLevel, unsafeLogging: true);
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

    /// <summary>The version (three parts), as in <c>STATUS TYPE=version</c>.</summary>
    public static string VersionText => BuildInfo.Version;

    /// <summary><c>pthost --version</c>: the version and the commit the executable was built from (spec/ipc.md §2.4).</summary>
    public static string VersionLine => $"pthost {BuildInfo.Version} (commit {BuildInfo.Commit})";

    private static async Task<int> RunAsync(PtConfig config, IpcWriter ipc)
    {
        ipc.UnsafeLogging = config.UnsafeLogging;
        var builder = CreateHostBuilder(config.LogLevel, config.UnsafeLogging);
        builder.Services.AddSingleton(config);
        builder.Services.AddSingleton(ipc);
        // spec/rendezvous.md §7: transports with a configured rendezvous signal through it; stdin lines for them are dropped.
        builder.Services.AddSingleton(sp => new SignalRoutes(config, OutboundDialer.Create(config), sp.GetRequiredService<ILoggerFactory>()));
        builder.Services.AddSingleton(sp =>
        {
            var routes = sp.GetRequiredService<SignalRoutes>();
            return new SignalRouter(config.Role, ipc, sp.GetRequiredService<ILogger<SignalRouter>>(), available: config.IpcVersion != 1)
            {
                RoutedElsewhere = t => routes.IsRouted(t) ? "this transport's signals go through the rendezvous (spec/rendezvous.md §7)" : null,
            };
        });
        builder.Services.AddSingleton<TransportRegistry>();
        builder.Services.AddSingleton<HostRuntime>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<HostRuntime>());
        using var host = builder.Build();

        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        var log = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("PtHost");
        var router = host.Services.GetRequiredService<SignalRouter>();
        // Open every transport's signal queue before stdin is read: a message may arrive before the transport starts.
        foreach (string t in config.Transports) router.For(t);
        _ = host.Services.GetRequiredService<SignalRoutes>(); // routes open (and receive) before the transports start; the container disposes them
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
            await RunHostAsync(host, log).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            log.LogCritical(e, "pthost failed");
            return ExitCodes.Software;
        }
        return runtime.FailureExitCode ?? ExitCodes.Ok;
    }

    /// <summary>
    /// Runs the host until it stops. Told to stop (stdin closed, a signal) before it had started is a clean
    /// shutdown (spec/ipc.md §9.1, §2.4): the start's cancellation is not an error, and the host is still
    /// stopped (whatever did start is closed) before it is disposed — unlike <c>RunAsync</c>, which disposes
    /// it without stopping when the start throws.
    /// </summary>
    private static async Task RunHostAsync(IHost host, ILogger log)
    {
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        try { await host.StartAsync().ConfigureAwait(false); }
        catch (OperationCanceledException) when (lifetime.ApplicationStopping.IsCancellationRequested)
        {
            log.LogInformation("stopped while starting");
        }
        // Returns once stopping was requested (at once, after a cancelled start), having stopped the host.
        await host.WaitForShutdownAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// The one host every long-running mode runs under: logging to stderr, SIGTERM/SIGINT/SIGQUIT stop
    /// it (ConsoleLifetime), 5 s for services to stop before their tokens fire.
    /// </summary>
    internal static HostApplicationBuilder CreateHostBuilder(LogLevel level, bool unsafeLogging)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true, ApplicationName = "pthost" });
        ConfigureLogging(builder.Logging, level, unsafeLogging);
        builder.Services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
        builder.Services.AddSingleton<IHostLifetime, Microsoft.Extensions.Hosting.Internal.ConsoleLifetime>();
        return builder;
    }

    /// <summary>
    /// <c>pthost relay NAME</c> (spec/ipc.md §2.4): the relay runs as the host's service. Exit 0 after
    /// SIGTERM/SIGINT, 78 for a bad configuration, 69 when it cannot run here or cannot listen.
    /// </summary>
    /// <param name="command">How errors name the command: <c>relay NAME</c>, or a transport command's name (spec/ipc.md §2.4).</param>
    internal static async Task<int> RunRelayAsync(IRelayService service, RelayArguments arguments, LogLevel level, bool unsafeLogging, string? command = null)
    {
        command ??= "relay " + service.Name;
        if (service.InlineSocketCompletions) InlineSocketCompletions.Prefer();
        var builder = CreateHostBuilder(level, unsafeLogging);
        builder.Services.AddSingleton(new IpcWriter(IpcWriter.Stdout(), IpcWriter.StdoutWritable) { UnsafeLogging = unsafeLogging });
        // Under systemd (Type=notify: NOTIFY_SOCKET set), READY=1 once every listener is bound and logs with
        // journald priorities (packaging/deb/systemd, spec/ipc.md §2.4).
        var notifier = new SystemdNotifier();
        if (notifier.IsEnabled) builder.Logging.AddSystemdConsole(o => o.UseUtcTimestamp = false);
        builder.Services.AddSingleton(sp => new RelayHost(service, arguments, sp.GetRequiredService<IpcWriter>(),
            sp.GetRequiredService<IHostApplicationLifetime>(), sp.GetRequiredService<ILoggerFactory>(), notifier.IsEnabled ? notifier : null, command));
        builder.Services.AddHostedService(sp => sp.GetRequiredService<RelayHost>());
        using var host = builder.Build();
        var relay = host.Services.GetRequiredService<RelayHost>();
        try
        {
            await RunHostAsync(host, host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("PtHost.Relay")).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            string text = e.ToString();
            Console.Error.WriteLine($"pthost: {command} failed: {(unsafeLogging ? text : AddressScrubber.Scrub(text))}");
            return ExitCodes.Software;
        }
        return relay.ExitCode;
    }

    /// <summary>Log lines waiting for stderr at most (spec/ipc.md §4.11): some 2 MB at worst.</summary>
    public const int LogQueueLines = 10_000;

    /// <summary>
    /// Logs go to stderr only, one line each (stdout belongs to the IPC), with addresses scrubbed
    /// unless <paramref name="unsafeLogging"/> (spec/ipc.md §4.11).
    /// </summary>
    public static void ConfigureLogging(ILoggingBuilder logging, LogLevel level, bool unsafeLogging = false)
    {
        logging.ClearProviders();
        logging.SetMinimumLevel(level);
        logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
            o.ColorBehavior = LoggerColorBehavior.Disabled;
        });
        logging.Services.Configure<ConsoleLoggerOptions>(o =>
        {
            o.LogToStandardErrorThreshold = LogLevel.Trace;
            // A parent that stops reading stderr must not stop the sessions (spec/ipc.md §4.11): once the pipe and
            // this queue are full, lines are dropped and counted in a later line, never waited for. Waiting blocked
            // every thread that logged, the socket event threads among them: the whole process stood still.
            o.MaxQueueLength = LogQueueLines;
            o.QueueFullMode = ConsoleLoggerQueueFullMode.DropWrite;
        });
        // ASP.NET Core and hosting chatter (Kestrel in the JET relay): warnings and errors only.
        logging.AddFilter("Microsoft", LogLevel.Warning);
        if (!unsafeLogging) logging.ScrubAddresses();
    }

    /// <summary><c>pthost generate-config TRANSPORT [--plugindir DIR]</c> (spec/ipc.md §2.3).</summary>
    internal static int GenerateConfig(string name, string? pluginDirectory, string? serverAddress = null)
    {
        using var loggers = LoggerFactory.Create(b => ConfigureLogging(b, LogLevel.Warning));
        var registry = new TransportRegistry();
        if (pluginDirectory is not null && !PluginSupport.IsSupported)
        {
            Console.Error.WriteLine($"pthost: generate-config: --plugindir: {PluginSupport.Unsupported}");
            return ExitCodes.Config;
        }
        if (pluginDirectory is not null && PluginSupport.IsSupported)
        {
            if (!Directory.Exists(pluginDirectory)) return CommandLine.UsageError("generate-config", $"--plugindir \"{pluginDirectory}\" is not a directory");
            if (Plugins.PluginDirectory.Problem(pluginDirectory) is { } unsafeDirectory) return CommandLine.UsageError("generate-config", $"--plugindir: {unsafeDirectory}");
            registry.LoadPlugins(pluginDirectory, loggers.CreateLogger("PtHost"));
        }
        var transport = registry.Create(name);
        if (transport is null) return CommandLine.UsageError("generate-config", $"no transport named \"{name}\" (known: {string.Join(", ", registry.Names.Order())})");
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
            // The dispatcher's -serverIP (spec/ipc.md §12.1): where the client finds the server.
            if (serverAddress is not null)
            {
                if (result["client"] is not JObject client) return CommandLine.UsageError("", $"-serverIP: transport {name} has no client options to put it in");
                client["serverAddress"] = serverAddress;
            }
            Console.Out.WriteLine(StrictJson.Write(result, indented: true));
            return ExitCodes.Ok;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"pthost: {name}: cannot generate a configuration: {e.Message}");
            return ExitCodes.Software;
        }
    }
}

/// <summary>
/// .NET on Linux hands every socket completion from its epoll threads to the thread pool: a futex wake, a
/// context switch and a worker's spinning per wake-up. A relay whose continuations never block
/// (<see cref="IRelayService.InlineSocketCompletions"/>) runs them on the epoll threads instead
/// (DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS, one epoll thread per core). An operator's own value of the
/// variable wins. Must run before the process's first asynchronous socket operation.
/// </summary>
internal static class InlineSocketCompletions
{
    public const string Variable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    public static void Prefer()
    {
        if (Environment.GetEnvironmentVariable(Variable) is null) Environment.SetEnvironmentVariable(Variable, "1");
    }
}
