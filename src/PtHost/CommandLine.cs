using System.CommandLine;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Hosting;
using PtHost.Plugins;

namespace PtHost;

/// <summary>
/// The command line (spec/ipc.md §2), one parser for every form: <c>--help</c> on stdout with exit 0
/// for every command, <c>--version</c> with the commit, and usage errors as one stderr line naming
/// the argument, exit 64. Relay subcommands come from <see cref="TransportRegistry.Relays"/>: the
/// executable maps each relay's option descriptions (<see cref="RelayOption"/>) to options and
/// knows nothing else of them.
/// </summary>
internal static class CommandLine
{
    private const string Forms = """
        A Pluggable Transports host (spec/ipc.md). Forms:
          pthost '<json>'                    run as a PT 2.0 client or server, configured by the JSON document (spec/ipc.md §3)
          pthost --config FILE               the same, the document read from FILE
          pthost                             with TOR_PT_MANAGED_TRANSPORT_VER set: PT 1.0 managed mode for tor (spec/ipc.md §10)
          pthost generate-config TRANSPORT   print the options a server and its clients need
          pthost demo                        run a server and a client on loopback and fetch through them
          pthost relay NAME --help           the relay services
          pthost asport-client --config FILE expose a local service through a pthost relay asport (spec/asport.md §4.4)
          pthost -FLAG ...                   shapeshifter-dispatcher's command line (spec/ipc.md §12), e.g.
                                             pthost -transparent -client -state DIR -transports plain -target HOST:PORT -proxylistenaddr 127.0.0.1:1443
        """;

    /// <summary>Parses <paramref name="args"/> and runs the command; returns the exit code.</summary>
    public static async Task<int> InvokeAsync(string[] args)
    {
        // shapeshifter-dispatcher's flags (spec/ipc.md §12.1): a first argument "-NAME" naming one of its flags.
        if (DispatcherCommandLine.IsDispatcherForm(args)) return await DispatcherCommandLine.InvokeAsync(args).ConfigureAwait(false);
        // The relay subcommands load three transport assemblies: built only for "pthost relay ..." (start-up of the other forms).
        var root = Build(relays: args.Length > 0 && (args[0] == "relay" || TransportRegistry.Commands.Any(c => c.Name == args[0])));
        // No response files: an argument is never replaced by a file's contents (a JSON document starting with '@' is just text).
        var result = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (result.Action is ParseErrorAction)
        {
            // One line: an argument nobody knows says most ("relay nosuch" also lacks a subcommand).
            var error = result.Errors.FirstOrDefault(e => result.UnmatchedTokens.Any(t => e.Message.Contains($"'{t}'", StringComparison.Ordinal))) ?? result.Errors[0];
            return UsageError(CommandPath(result.CommandResult), error.Message);
        }
        // Signals are the host's (ConsoleLifetime), not the parser's; exceptions are not turned into exit 1.
        var invocation = new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null };
        return await result.InvokeAsync(invocation).ConfigureAwait(false);
    }

    /// <summary>The command tree; the <c>relay</c> command has its subcommands when <paramref name="relays"/> is set.</summary>
    public static RootCommand Build(bool relays = true)
    {
        var json = new Argument<string?>("JSON")
        {
            Description = "The configuration document: one argument beginning with '{' (spec/ipc.md §3).",
            Arity = ArgumentArity.ZeroOrOne,
            Hidden = true, // the forms are in the description; subcommands would show it in their usage lines
        };
        var config = new Option<string>("--config") { Description = "Read the configuration document from FILE.", HelpName = "FILE" };
        var root = new RootCommand(Forms + Environment.NewLine + DispatcherCommandLine.Usage()) { json, config };
        foreach (var option in root.Options)
            if (option is VersionOption version) version.Action = new PrintVersion();
        root.Validators.Add(r =>
        {
            string? document = r.GetValue(json);
            if (document is not null && !document.TrimStart().StartsWith('{')) r.AddError($"unexpected argument \"{document}\"");
            else if (document is not null && r.GetResult(config) is not null) r.AddError("give the configuration either as JSON or with --config, not both");
        });
        root.SetAction(async (parse, _) =>
        {
            string? document = parse.GetValue(json), file = parse.GetValue(config);
            if (document is null && file is null)
            {
                var env = Environment.GetEnvironmentVariables();
                if (PtConfig.IsManaged(env)) return await Program.RunManagedAsync(env).ConfigureAwait(false);
                return UsageError("", "no configuration given (pthost --help shows the command forms)");
            }
            return await Program.RunConfigAsync(document, file).ConfigureAwait(false);
        });

        var transport = new Argument<string>("TRANSPORT") { Description = "The transport's name (built in, or a plugin's with --plugindir)." };
        var pluginDir = new Option<string>("--plugindir") { Description = "Load the transport plugins in DIR first (spec/ipc.md §8).", HelpName = "DIR" };
        var generate = new Command("generate-config", "Print {\"client\": {...}, \"server\": {...}}: the options a server and its clients need (spec/ipc.md §2.3).")
        {
            transport, pluginDir,
        };
        generate.SetAction(parse => Program.GenerateConfig(parse.GetValue(transport)!, parse.GetValue(pluginDir)));
        root.Subcommands.Add(generate);

        // Arguments after "demo" are accepted and ignored (spec/ipc.md §2.4).
        var demo = new Command("demo", "Start a server and a client on loopback, fetch a file through them, and check it (spec/ipc.md §2.4).")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        demo.SetAction((_, _) => Demo.DemoCommand.RunAsync([]));
        root.Subcommands.Add(demo);

        var relay = new Command("relay", "Run a relay service in the foreground: LISTEN and STATUS lines on stdout, logs on stderr, exit 0 on SIGTERM/SIGINT.");
        if (relays)
            foreach (var service in TransportRegistry.Relays) relay.Subcommands.Add(RelayCommand(service));
        root.Subcommands.Add(relay);
        // Transport commands (spec/ipc.md §2.4): run as relays are, under their own name.
        if (relays)
            foreach (var (_, create) in TransportRegistry.Commands) root.Subcommands.Add(RelayCommand(create(), topLevel: true));
        return root;
    }

    /// <summary>
    /// <c>pthost relay NAME</c>: the relay's own options, plus <c>--loglevel</c> and <c>--unsafe-logging</c>. An option may be given
    /// more than once; every value must be valid and the last one counts (as the hand-written parsers did).
    /// </summary>
    private static Command RelayCommand(IRelayService service, bool topLevel = false)
    {
        string path = topLevel ? service.Name : "relay " + service.Name;
        var command = new Command(service.Name, service.Description);
        var options = new List<(RelayOption Relay, Option<string[]> Option)>();
        var flags = new List<(RelayOption Relay, Option<bool> Option)>();
        // The executable's own relay options (spec/ipc.md §4.12): --metrics, unless the relay has one.
        IReadOnlyList<RelayOption> relayOptions = service.Options.Any(o => o.Name == RelayHost.MetricsOption.Name) ? service.Options : [.. service.Options, RelayHost.MetricsOption];
        foreach (var o in relayOptions)
        {
            if (o.Kind == RelayOptionKind.Flag)
            {
                var flag = new Option<bool>("--" + o.Name) { Description = o.Help };
                command.Options.Add(flag);
                flags.Add((o, flag));
                continue;
            }
            var option = Repeatable("--" + o.Name, o.Help, o.ValueName, o.Default, text => o.TryRead(text, out _, out string? problem) ? null : problem);
            option.Required = o.Required;
            command.Options.Add(option);
            options.Add((o, option));
        }
        var level = Repeatable("--loglevel", "Threshold of the stderr log: error, warning, notice, info, debug, trace or none.", "LEVEL", "info",
            text => PtConfig.TryParseLogLevel(text) is null ? $"--loglevel \"{text}\" is not one of error, warning, notice, info, debug, trace, none" : null);
        command.Options.Add(level);
        var unsafeLogging = new Option<bool>("--unsafe-logging")
        {
            Description = "Keep the addresses of clients and peers in the logs (by default they are [scrubbed], spec/ipc.md §4.11).",
        };
        command.Options.Add(unsafeLogging);
        // A relay without a configuration file of its own reads its options from one (a systemd unit's
        // /etc/pthost/NAME.json): the executable's, keys named as the options (spec/ipc.md §2.4).
        Option<string>? file = null;
        if (!service.Options.Any(o => o.Name == "config"))
        {
            file = new Option<string>("--config") { Description = "Read the options from a JSON object FILE, keys named as the options; the command line wins.", HelpName = "FILE" };
            command.Options.Add(file);
        }
        command.SetAction((parse, _) =>
        {
            var given = new Dictionary<string, string>(StringComparer.Ordinal);
            if (file is not null && parse.GetValue(file) is { } configFile)
            {
                try
                {
                    foreach (var (name, text) in RelayArguments.ReadFile(relayOptions, File.ReadAllText(configFile))) given[name] = text;
                }
                catch (Exception e) when (e is OptionsException or IOException or UnauthorizedAccessException)
                {
                    Console.Error.WriteLine($"pthost: {path}: configuration {configFile}: {e.Message}");
                    return Task.FromResult(ExitCodes.Config);
                }
            }
            foreach (var (o, option) in options)
                if (parse.GetResult(option) is { Implicit: false } r) given[o.Name] = r.Tokens[^1].Value;
            foreach (var (o, flag) in flags)
                if (parse.GetValue(flag)) given[o.Name] = "true";
            RelayArguments arguments;
            try { arguments = RelayArguments.Read(relayOptions, given); }
            catch (FormatException e) { return Task.FromResult(UsageError(path, e.Message)); }
            string levelText = parse.GetResult(level) is { Implicit: false } l ? l.Tokens[^1].Value : "info";
            return Program.RunRelayAsync(service, arguments, PtConfig.TryParseLogLevel(levelText)!.Value, parse.GetValue(unsafeLogging), path);
        });
        return command;
    }

    /// <summary>An option taking one value per occurrence, given any number of times; <paramref name="check"/> returns the problem with a value, or null.</summary>
    private static Option<string[]> Repeatable(string name, string help, string valueName, string? defaultText, Func<string, string?> check)
    {
        var option = new Option<string[]>(name) { Description = help, HelpName = valueName, Arity = ArgumentArity.OneOrMore, AllowMultipleArgumentsPerToken = false };
        if (defaultText is not null) option.DefaultValueFactory = _ => [defaultText];
        option.Validators.Add(r =>
        {
            if (r.Implicit) return;
            foreach (var token in r.Tokens)
                if (check(token.Value) is { } problem)
                {
                    r.AddError(problem);
                    return;
                }
        });
        return option;
    }

    /// <summary>A usage error: one line <c>pthost: [COMMAND: ]PROBLEM</c> on stderr, exit 64 (spec/ipc.md §2.5).</summary>
    public static int UsageError(string command, string problem)
    {
        Console.Error.WriteLine(command.Length == 0 ? $"pthost: {problem}" : $"pthost: {command}: {problem}");
        return ExitCodes.Usage;
    }

    /// <summary>The subcommand words, e.g. <c>relay zephyr</c>; empty for the root.</summary>
    private static string CommandPath(CommandResult? result)
    {
        var words = new List<string>();
        for (var r = result; r?.Parent is not null; r = r.Parent as CommandResult) words.Insert(0, r.Command.Name);
        return string.Join(' ', words);
    }

    private sealed class PrintVersion : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            parseResult.InvocationConfiguration.Output.WriteLine(Program.VersionLine);
            return ExitCodes.Ok;
        }
    }
}
