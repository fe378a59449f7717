using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Hosting;

namespace PtHost;

/// <summary>
/// shapeshifter-dispatcher's command line (spec/ipc.md §12.1): Go <c>flag</c> syntax, mapped onto the JSON
/// configuration (§3), which then validates it as any document. Flags PtHost cannot honour exit 64 naming the flag.
/// </summary>
internal static class DispatcherCommandLine
{
    private enum Kind { Bool, Text }

    /// <summary>What PtHost does with a flag (the table of spec/ipc.md §12.1).</summary>
    private enum Use { Mapped, Refused }

    private sealed record Flag(string Name, Kind Kind, Use Use, string Help);

    /// <summary>Every flag of shapeshifter-dispatcher (main.go), plus <c>-orport</c> of its earlier releases.</summary>
    private static readonly Flag[] Flags =
    [
        new("ptversion", Kind.Text, Use.Mapped, "PT versions, comma-separated (default 2.1); a list without 2.x but with 3.0 announces VERSION 3.0"),
        new("state", Kind.Text, Use.Mapped, "state directory (default \"state\") → state"),
        new("exit-on-stdin-close", Kind.Bool, Use.Mapped, "→ exit-on-stdin-close"),
        new("transports", Kind.Text, Use.Mapped, "comma-separated transport names → transports (obfs4 → external_obfs4)"),
        new("transport", Kind.Text, Use.Mapped, "one transport name → transports"),
        new("bindhost", Kind.Text, Use.Mapped, "server: with -bindport, the transport's bindaddr"),
        new("bindport", Kind.Text, Use.Mapped, "server: with -bindhost, the transport's bindaddr"),
        new("targethost", Kind.Text, Use.Mapped, "with -targetport, → target"),
        new("targetport", Kind.Text, Use.Mapped, "with -targethost, → target"),
        new("proxylistenhost", Kind.Text, Use.Mapped, "client: with -proxylistenport, → proxylistenaddr"),
        new("proxylistenport", Kind.Text, Use.Mapped, "client: with -proxylistenhost, → proxylistenaddr"),
        new("mode", Kind.Text, Use.Mapped, "socks5, transparent-TCP, transparent-UDP or STUN → mode"),
        new("proxy", Kind.Text, Use.Mapped, "client: upstream proxy URI → proxy"),
        new("options", Kind.Text, Use.Mapped, "a JSON object → options of every transport"),
        new("bindaddr", Kind.Text, Use.Mapped, "server: name-ip:port[,name-ip:port...] → bindaddr"),
        new("extorport", Kind.Text, Use.Mapped, "server: ip:port of tor's ExtORPort (spec/ipc.md §10.4)"),
        new("authcookie", Kind.Text, Use.Mapped, "server: the ExtORPort's auth cookie file"),
        new("proxylistenaddr", Kind.Text, Use.Mapped, "client: ip:port → proxylistenaddr"),
        new("optionsFile", Kind.Text, Use.Mapped, "a file holding -options' JSON"),
        new("showVersion", Kind.Bool, Use.Mapped, "print the version line and exit"),
        new("logLevel", Kind.Text, Use.Mapped, "ERROR, WARN, INFO, DEBUG (any case; also FATAL, DISABLE) → loglevel (default ERROR)"),
        new("enableLogging", Kind.Bool, Use.Mapped, "accepted: logs always go to stderr, never to a file"),
        new("ipcLogLevel", Kind.Text, Use.Mapped, "NONE, ERROR, WARN, INFO or DEBUG: checked; LOG lines are PtHost's fixed ones (§4.6)"),
        new("generateConfig", Kind.Bool, Use.Mapped, "with -transport: pthost generate-config TRANSPORT"),
        new("serverIP", Kind.Text, Use.Mapped, "with -generateConfig: the client options' serverAddress"),
        new("client", Kind.Bool, Use.Mapped, "role client (the default)"),
        new("server", Kind.Bool, Use.Mapped, "role server"),
        new("transparent", Kind.Bool, Use.Mapped, "transparent-TCP mode (with -udp: transparent-UDP)"),
        new("udp", Kind.Bool, Use.Mapped, "STUN mode (with -transparent: transparent-UDP)"),
        new("target", Kind.Text, Use.Mapped, "server: where sessions go; client (transparent, STUN): the PT server → target"),
        new("orport", Kind.Text, Use.Mapped, "earlier releases' name of -target for a server"),
        new("toneburst", Kind.Bool, Use.Refused, "Replicant configuration generation: no Replicant transport"),
        new("polish", Kind.Bool, Use.Refused, "Replicant configuration generation: no Replicant transport"),
        new("enableLocket", Kind.Bool, Use.Refused, "Locket connection logging: not supported"),
    ];

    /// <summary>
    /// The dispatcher form: the first argument is <c>-NAME</c> or <c>-NAME=VALUE</c> with exactly one dash and NAME one
    /// of <see cref="Flags"/> (spec/ipc.md §12.1). No PtHost option has one dash and such a name, so the forms never overlap.
    /// </summary>
    public static bool IsDispatcherForm(string[] args)
    {
        if (args.Length == 0 || args[0].Length < 2 || args[0][0] != '-' || args[0][1] == '-') return false;
        string name = args[0][1..];
        int eq = name.IndexOf('=');
        if (eq >= 0) name = name[..eq];
        return Array.Exists(Flags, f => f.Name == name);
    }

    /// <summary>The flags as spec/ipc.md §12.1 lists them, for <c>pthost --help</c>.</summary>
    public static string Usage()
    {
        var lines = new List<string> { "shapeshifter-dispatcher flags (spec/ipc.md §12), when the first argument is one of them:" };
        foreach (var f in Flags)
            lines.Add($"  -{f.Name}{(f.Kind == Kind.Text ? " VALUE" : ""),-7} {(f.Use == Use.Refused ? "refused (exit 64): " : "")}{f.Help}");
        return string.Join(Environment.NewLine, lines);
    }

    public static async Task<int> InvokeAsync(string[] args)
    {
        Dictionary<string, string> given;
        try { given = Parse(args); }
        catch (FormatException e) { return CommandLine.UsageError("", e.Message); }
        if (given.ContainsKey("help")) { Console.Out.WriteLine(Usage()); return ExitCodes.Ok; }
        foreach (var f in Flags)
            if (f.Use == Use.Refused && given.ContainsKey(f.Name) && !(f.Kind == Kind.Bool && given[f.Name] == "false"))
                return CommandLine.UsageError("", $"-{f.Name}: not supported ({f.Help})");
        if (IsTrue(given, "showVersion"))
        {
            Console.Out.WriteLine(Program.VersionLine);
            return ExitCodes.Ok;
        }
        Mapping mapping;
        try { mapping = Map(given); }
        catch (FormatException e) { return CommandLine.UsageError("", e.Message); }
        if (mapping.Generate is { } generate) return Program.GenerateConfig(generate, null, mapping.ServerIp);
        return await Program.RunDispatcherAsync(mapping.Document, mapping.AnnouncedVersion, mapping.ExtOrPort, mapping.AuthCookie).ConfigureAwait(false);
    }

    /// <summary>The configuration a command line means, or a configuration to generate.</summary>
    internal sealed record Mapping(JObject Document, string AnnouncedVersion, IPEndPoint? ExtOrPort, string? AuthCookie, string? Generate, string? ServerIp);

    /// <summary>
    /// Go's <c>flag</c> package: <c>-name</c> or <c>--name</c>; <c>-name=value</c>; a text flag takes the next argument
    /// whatever it looks like; a boolean never does (<c>-name=false</c> turns it off, strconv.ParseBool's spellings).
    /// Parsing stops at <c>--</c> or the first argument that is not a flag; PtHost refuses any argument left (§12.1).
    /// A flag given twice: the last value counts, as in Go.
    /// </summary>
    internal static Dictionary<string, string> Parse(string[] args)
    {
        var given = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i++)
        {
            string arg = args[i];
            if (arg == "--")
            {
                if (i + 1 < args.Length) throw new FormatException($"unexpected argument \"{args[i + 1]}\" (the dispatcher form takes flags only)");
                break;
            }
            if (arg.Length < 2 || arg[0] != '-') throw new FormatException($"unexpected argument \"{arg}\" (the dispatcher form takes flags only)");
            string body = arg[1] == '-' ? arg[2..] : arg[1..];
            if (body.Length == 0 || body[0] is '-' or '=') throw new FormatException($"bad flag syntax: {arg}");
            int eq = body.IndexOf('=');
            string name = eq >= 0 ? body[..eq] : body;
            string? value = eq >= 0 ? body[(eq + 1)..] : null;
            if (name is "h" or "help")
            {
                given["help"] = "true";
                continue;
            }
            var flag = Array.Find(Flags, f => f.Name == name) ?? throw new FormatException($"flag provided but not defined: -{name}");
            if (flag.Kind == Kind.Bool)
            {
                given[name] = value is null ? "true" : value switch
                {
                    "1" or "t" or "T" or "TRUE" or "true" or "True" => "true",
                    "0" or "f" or "F" or "FALSE" or "false" or "False" => "false",
                    _ => throw new FormatException($"invalid boolean value \"{value}\" for -{name}"),
                };
                continue;
            }
            if (value is null)
            {
                if (i + 1 >= args.Length) throw new FormatException($"flag needs an argument: -{name}");
                value = args[++i];
            }
            given[name] = value;
        }
        return given;
    }

    private static bool IsTrue(Dictionary<string, string> given, string name) => given.TryGetValue(name, out var v) && v == "true";

    private static string? Text(Dictionary<string, string> given, string name) => given.TryGetValue(name, out var v) && v.Length > 0 ? v : null;

    /// <summary>The mapping of spec/ipc.md §12.1; throws <see cref="FormatException"/> (a usage error) naming the flag.</summary>
    internal static Mapping Map(Dictionary<string, string> given)
    {
        if (Text(given, "transport") is { } one && Text(given, "transports") is { } many && one != many)
            throw new FormatException("-transport and -transports name different transports: give one of them");
        string list = Text(given, "transports") ?? Text(given, "transport") ?? "";
        if (IsTrue(given, "generateConfig"))
        {
            string name = Text(given, "transport") ?? (list.Contains(',') ? "" : list);
            if (name.Length == 0) throw new FormatException("-generateConfig needs -transport NAME");
            return new Mapping([], "2", null, null, name == "obfs4" ? throw new FormatException("-generateConfig -transport obfs4: obfs4proxy makes its own server state; run the server to get its cert") : name, Text(given, "serverIP"));
        }
        if (Text(given, "serverIP") is not null) throw new FormatException("-serverIP applies to -generateConfig only");
        if (IsTrue(given, "client") && IsTrue(given, "server")) throw new FormatException("-client and -server: give one of them");
        bool server = IsTrue(given, "server");
        if (list.Length == 0) throw new FormatException("no transport: give -transports NAME[,NAME...] or -transport NAME");
        if (list == "*") throw new FormatException("-transports *: name the transports (PtHost has no \"every transport\" list here)");
        var names = list.Split(',').Select(n => n == "obfs4" ? "external_obfs4" : n).ToList();

        var doc = new JObject { ["role"] = server ? "server" : "client", ["transports"] = new JArray(names) };
        // -ptversion: PtHost speaks 2.x; a list naming 3.0 (and no 2.x) gets VERSION 3.0 with 2.1's lines (§12.1).
        string ptversion = given.GetValueOrDefault("ptversion", "2.1");
        var versions = ptversion.Split(',', StringSplitOptions.TrimEntries);
        string announced = PtConfig.IsSupportedVersion(ptversion) ? "2" : versions.Any(v => v is "3" or "3.0") ? "3.0"
            : throw new FormatException($"-ptversion \"{ptversion}\": PtHost speaks 2, 2.0, 2.1 and 3.0");
        doc["state"] = given.GetValueOrDefault("state", "state");
        if (IsTrue(given, "exit-on-stdin-close")) doc["exit-on-stdin-close"] = true;
        doc["loglevel"] = LogLevel(given.GetValueOrDefault("logLevel", "ERROR"));
        if (given.TryGetValue("ipcLogLevel", out var ipcLevel) && ipcLevel is not ("NONE" or "ERROR" or "WARN" or "INFO" or "DEBUG"))
            throw new FormatException($"-ipcLogLevel \"{ipcLevel}\" is not one of NONE, ERROR, WARN, INFO, DEBUG");

        // The mode: -mode wins; else -transparent and -udp as the dispatcher's determineMode.
        string mode = Text(given, "mode") switch
        {
            null => IsTrue(given, "transparent") ? IsTrue(given, "udp") ? "transparent-udp" : "transparent-tcp" : IsTrue(given, "udp") ? "stun" : "socks5",
            "socks5" => "socks5",
            "transparent-TCP" => "transparent-tcp",
            "transparent-UDP" => "transparent-udp",
            "STUN" => "stun",
            string other => throw new FormatException($"-mode \"{other}\" is not one of socks5, transparent-TCP, transparent-UDP, STUN"),
        };

        // -options / -optionsFile: one JSON object handed to every transport (the dispatcher does the same).
        string? optionsText = Text(given, "options");
        if (Text(given, "optionsFile") is { } file)
        {
            if (optionsText is not null) throw new FormatException("-options and -optionsFile: give one of them");
            try { optionsText = File.ReadAllText(file); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
            {
                throw new FormatException($"-optionsFile {file}: cannot be read: {e.Message}");
            }
        }
        JToken? options = null;
        if (optionsText is not null)
        {
            try { options = StrictJson.Parse(optionsText); }
            catch (Exception e) when (e is not OutOfMemoryException) { throw new FormatException($"-options: not valid JSON (RFC 8259): {e.Message}"); }
        }

        string? target = Text(given, "target") ?? Text(given, "orport");
        if (Text(given, "target") is not null && Text(given, "orport") is not null) throw new FormatException("-target and -orport: give one of them");
        if (target is null && (Text(given, "targethost"), Text(given, "targetport")) is ({ } th, { } tp)) target = HostPort(th, tp);
        else if (target is null && (Text(given, "targethost") ?? Text(given, "targetport")) is not null) throw new FormatException("-targethost and -targetport go together");

        IPEndPoint? extOrPort = null;
        string? cookie = null;
        if (server)
        {
            foreach (string clientOnly in new[] { "proxylistenaddr", "proxylistenhost", "proxylistenport", "proxy" })
                if (Text(given, clientOnly) is not null) throw new FormatException($"-{clientOnly} applies to -client only");
            var bind = new JObject();
            if (Text(given, "bindaddr") is { } bindaddr)
            {
                foreach (string spec in bindaddr.Split(','))
                {
                    int dash = spec.IndexOf('-');
                    if (dash <= 0) throw new FormatException($"-bindaddr \"{spec}\": expected NAME-ip:port");
                    string name = spec[..dash] == "obfs4" ? "external_obfs4" : spec[..dash];
                    if (!names.Contains(name)) continue; // the dispatcher keeps the bindaddrs of the transports it runs (FilterBindaddrs)
                    bind[name] = spec[(dash + 1)..];
                }
            }
            else if ((Text(given, "bindhost"), Text(given, "bindport")) is ({ } bh, { } bp))
            {
                if (names.Count != 1) throw new FormatException("-bindhost/-bindport serve one transport; use -bindaddr NAME-ip:port,...");
                bind[names[0]] = HostPort(bh, bp);
            }
            else if ((Text(given, "bindhost") ?? Text(given, "bindport")) is not null) throw new FormatException("-bindhost and -bindport go together");
            if (bind.Count > 0) doc["bindaddr"] = bind;
            if (target is null) throw new FormatException("a server needs -target HOST:PORT (or -orport, or -targethost and -targetport)");
            doc["target"] = target;
            if (Text(given, "extorport") is { } ext)
            {
                if (!IPEndPoint.TryParse(ext, out extOrPort) || extOrPort.Port == 0) throw new FormatException($"-extorport \"{ext}\": expected ip:port");
                cookie = Text(given, "authcookie") ?? throw new FormatException("-extorport needs -authcookie FILE");
            }
            else if (Text(given, "authcookie") is not null) throw new FormatException("-authcookie applies with -extorport only");
        }
        else
        {
            foreach (string serverOnly in new[] { "bindaddr", "bindhost", "bindport", "extorport", "authcookie", "orport" })
                if (Text(given, serverOnly) is not null) throw new FormatException($"-{serverOnly} applies to -server only");
            string? listen = Text(given, "proxylistenaddr");
            if (listen is null && (Text(given, "proxylistenhost"), Text(given, "proxylistenport")) is ({ } lh, { } lp)) listen = HostPort(lh, lp);
            else if (listen is null && (Text(given, "proxylistenhost") ?? Text(given, "proxylistenport")) is not null) throw new FormatException("-proxylistenhost and -proxylistenport go together");
            if (listen is not null) doc["proxylistenaddr"] = listen;
            if (mode != "socks5") doc["mode"] = mode;
            if (target is not null)
            {
                if (mode == "socks5") throw new FormatException("-target: a SOCKS5 client names its server per connection; -target needs -transparent or -udp");
                doc["target"] = target;
            }
            if (Text(given, "proxy") is { } proxy) doc["proxy"] = proxy;
        }

        var perTransport = new JObject();
        foreach (string name in names)
        {
            if (name == "external_obfs4") perTransport[name] = Obfs4Options(options, server, mode, target);
            else if (options is not null) perTransport[name] = options.DeepClone();
        }
        if (perTransport.Count > 0) doc["options"] = perTransport;
        return new Mapping(doc, announced, extOrPort, cookie, null, null);
    }

    /// <summary>
    /// <c>-transports obfs4</c> (spec/ipc.md §12.1): Debian's obfs4proxy hosted as <c>external_obfs4</c> (spec/external.md §4).
    /// A server's -options (obfs4's own server options, strings) become <c>serverOptions</c>. A client's become nothing:
    /// obfs4's cert and iat-mode are per-connection PT arguments, which only a SOCKS5 client carries (§5.4).
    /// </summary>
    private static JObject Obfs4Options(JToken? options, bool server, string mode, string? target)
    {
        if (!server && mode != "socks5")
            throw new FormatException($"-transports obfs4 in {mode} mode: obfs4proxy's client takes the server's cert per SOCKS connection, which a transparent client has no way to give; use the SOCKS5 mode (no -transparent, no -udp)");
        string exec = new[] { "/usr/bin/obfs4proxy", "/usr/local/bin/obfs4proxy" }.FirstOrDefault(File.Exists)
            ?? throw new FormatException("-transports obfs4: obfs4proxy is not installed (/usr/bin/obfs4proxy)");
        var o = new JObject { ["exec"] = exec, ["method"] = "obfs4" };
        if (server && options is JObject serverOptions) o["serverOptions"] = serverOptions.DeepClone();
        else if (!server && options is JObject { Count: > 0 })
            throw new FormatException("-transports obfs4 with -options on a client: obfs4's cert and iat-mode travel as PT arguments of each SOCKS5 connection (the SOCKS5 mode without -options), not as options");
        return o;
    }

    /// <summary>The dispatcher's -logLevel (golog's levels, lower-cased as main.go does) → loglevel.</summary>
    private static string LogLevel(string text) => text.ToLowerInvariant() switch
    {
        "debug" => "debug",
        "info" => "info",
        "warn" => "warning",
        "error" => "error",
        "fatal" or "disable" => "none",
        _ => throw new FormatException($"-logLevel \"{text}\" is not one of ERROR, WARN, INFO, DEBUG, FATAL, DISABLE"),
    };

    private static string HostPort(string host, string port) => host.Contains(':') && !host.StartsWith('[') ? $"[{host}]:{port}" : $"{host}:{port}";
}
