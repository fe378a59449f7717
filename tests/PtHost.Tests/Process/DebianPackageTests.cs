using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Quic;
using PtHost.Transports.Asport;

namespace PtHost.Tests.Process;

/// <summary>
/// packaging/deb/build.sh around the NativeAOT pthost: the package's contents, lintian, the units
/// (systemd-analyze verify and security), a system-wide <c>dpkg -i</c> and one into a scratch root
/// (dpkg --root), pthost demo from /usr/bin, the three relays started exactly as their units start them,
/// and dpkg --purge leaving nothing. systemd is not PID 1 where these tests run (packaging/README.md),
/// so no unit is started by systemd itself.
/// </summary>
[Collection("process")]
public partial class DebianPackageTests
{
    private static readonly Lazy<Task<string>> s_deb = new(BuildAsync, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly string[] Relays = ["zephyr", "jet", "asport"];

    /// <summary>Every unit the package ships: one per relay, and the template units for several instances on one machine (docs/deploy.md §2).</summary>
    private static readonly string[] Units = [.. Relays.Select(r => $"pthost-{r}.service"), "pthost-zephyr@.service", "pthost-jet@.service"];

    private static async Task<string> BuildAsync()
    {
        string native = PtHostExecutable.NativeAotPath;
        string output = Directory.CreateTempSubdirectory("pthost-deb-").FullName;
        var r = await PtProcess.RunAsync("bash", [Path.Combine(PtHostExecutable.RepoRoot, "packaging", "deb", "build.sh"), "--binary", native, "--out", output], TimeSpan.FromMinutes(2));
        Assert.True(r.Exit == 0, "build.sh: " + r.Stderr);
        string deb = r.Stdout.Trim().Split('\n')[^1];
        Assert.Matches(@"/pthost_\d+\.\d+\.\d+_amd64\.deb$", deb);
        return deb;
    }

    [Fact]
    public async Task The_package_holds_the_native_binary_the_man_page_completion_and_the_units()
    {
        string deb = await s_deb.Value;
        var contents = await RunOkAsync("dpkg-deb", "--contents", deb);
        var files = contents.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Where(l => l.StartsWith('-'))
            .Select(l => l[(l.IndexOf("./", StringComparison.Ordinal) + 1)..])
            .Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(
        [
            "/etc/default/pthost-asport", "/etc/default/pthost-jet", "/etc/default/pthost-zephyr", "/etc/pthost/jet.json", "/etc/pthost/zephyr.json",
            "/lib/systemd/system/pthost-asport.service", "/lib/systemd/system/pthost-jet.service", "/lib/systemd/system/pthost-jet@.service",
            "/lib/systemd/system/pthost-zephyr.service", "/lib/systemd/system/pthost-zephyr@.service",
            "/usr/bin/pthost", "/usr/share/bash-completion/completions/pthost", "/usr/share/doc/pthost/changelog.gz",
            "/usr/share/doc/pthost/copyright", "/usr/share/man/man1/pthost.1.gz",
        ], files);
        string depends = await RunOkAsync("dpkg-deb", "--field", deb, "Depends");
        foreach (string library in new[] { "libc6", "zlib1g", "libngtcp2-9", "libngtcp2-crypto-gnutls2", "libgnutls30", "libssl3" })
            Assert.Contains(library, depends, StringComparison.Ordinal);
        Assert.DoesNotContain("dotnet", depends, StringComparison.Ordinal);
        Assert.Equal("/etc/default/pthost-asport\n/etc/default/pthost-jet\n/etc/default/pthost-zephyr\n/etc/pthost/jet.json\n/etc/pthost/zephyr.json",
            (await RunOkAsync("dpkg-deb", "--info", deb, "conffiles")).Trim());
    }

    [Fact]
    public async Task The_man_page_names_every_command_relay_option_configuration_key_and_exit_code()
    {
        string man = (await File.ReadAllTextAsync(Path.Combine(PtHostExecutable.RepoRoot, "packaging", "deb", "pthost.1"))).Replace("\\-", "-", StringComparison.Ordinal);
        string pthost = PtHostExecutable.NativeAotPath;
        // Commands and relay options, from the executable's own --help.
        foreach (string command in new[] { "generate-config", "demo", "relay", "--config", "--version", "--help" })
            Assert.Contains(command, man, StringComparison.Ordinal);
        foreach (string relay in Relays)
        {
            var help = await PtProcess.RunAsync(pthost, "relay", relay, "--help");
            Assert.Equal(0, help.Exit);
            var options = OptionName().Matches(help.Stdout).Select(m => m.Groups[1].Value).Distinct().ToList();
            Assert.Contains("--listen", options);
            foreach (string option in options) Assert.Contains(option, man, StringComparison.Ordinal);
        }
        // Configuration keys: the list pthost gives for an unknown key (spec/ipc.md §3.3).
        await using (var p = PtProcess.Start(pthost, ["{\"role\":\"client\",\"transports\":[\"plain\"],\"bogus\":1}"], null))
        {
            Assert.Equal(78, await p.WaitForExitAsync());
            string line = Assert.Single(p.StdoutLines);
            string known = line[(line.IndexOf("(known: ", StringComparison.Ordinal) + "(known: ".Length)..^1];
            foreach (string key in known.Split(", "))
                Assert.Matches(@"(?m)^\.B " + Regex.Escape(key) + "$", man);
        }
        // Exit codes (spec/ipc.md §2.5).
        foreach (string code in new[] { "0", "64", "69", "70", "73", "78" })
            Assert.Matches(@"(?m)^\.TP\n\.B " + code + "$", man);
    }

    [GeneratedRegex(@"^\s+(--[a-z-]+)", RegexOptions.Multiline)]
    private static partial Regex OptionName();

    [Fact]
    public async Task Lintian_reports_no_errors_and_no_warnings()
    {
        string deb = await s_deb.Value;
        var r = await PtProcess.RunAsync("lintian", ["--pedantic", "--fail-on", "error,warning", deb], TimeSpan.FromMinutes(5));
        var tags = r.Stdout.Split('\n').Where(l => l.StartsWith("E: ", StringComparison.Ordinal) || l.StartsWith("W: ", StringComparison.Ordinal)).ToList();
        Assert.True(r.Exit == 0 && tags.Count == 0, $"lintian exit {r.Exit}:\n{r.Stdout}\n{r.Stderr}");
    }

    [Fact]
    public async Task Each_unit_verifies_and_is_rated_at_most_2_0_by_systemd_analyze_security()
    {
        using var root = await ScratchRoot.InstallAsync(await s_deb.Value);
        await root.AddSystemdOwnUnitsAsync();
        foreach (string name in Units)
        {
            string unit = $"/lib/systemd/system/{name}";
            // verify resolves the unit's dependencies in the root (systemd's own targets beside ours), checks
            // ExecStart's binary and the Documentation man page (MANPATH into the root). Parse problems are
            // warnings with exit 0: stderr must stay empty.
            var verify = await RunWithEnvironmentAsync("systemd-analyze", ["verify", "--root=" + root.Path, unit],
                new Dictionary<string, string> { ["MANPATH"] = root.Path + "/usr/share/man" });
            Assert.True(verify.Exit == 0 && verify.Stderr.Trim().Length == 0, $"verify {unit}: exit {verify.Exit}: {verify.Stderr}");

            var security = await PtProcess.RunAsync("systemd-analyze", ["security", "--offline=true", "--no-pager", root.Path + unit], TimeSpan.FromMinutes(1));
            var m = ExposureLine().Match(security.Stdout);
            Assert.True(m.Success, security.Stdout + security.Stderr);
            double exposure = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            Assert.True(exposure <= 2.0, $"{name} exposure {exposure}");
        }
    }

    [Fact]
    public async Task Dpkg_i_installs_it_demo_runs_from_usr_bin_each_relay_serves_as_its_unit_starts_it_and_purge_leaves_no_file()
    {
        // The real thing, system-wide (CI runs as root on a throw-away machine): dpkg -i, then each relay
        // started from /usr/bin with the unit's own command line and /etc/pthost files, then dpkg --purge.
        string deb = await s_deb.Value;
        await RunOkAsync(Sudo("dpkg"), [.. SudoArgs, "--install", deb]);
        string[] packaged = [];
        try
        {
            Assert.Contains("ii  pthost", await RunOkAsync("dpkg", "-l", "pthost"), StringComparison.Ordinal);
            packaged = (await RunOkAsync("dpkg", "-L", "pthost")).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Contains("/usr/bin/pthost", packaged);
            Assert.Contains("/etc/pthost/zephyr.json", packaged);

            var version = await PtProcess.RunAsync("/usr/bin/pthost", "--version");
            Assert.Matches(@"^pthost \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}|unknown)\)$", version.Stdout.Trim());
            var demo = await PtProcess.RunAsync("/usr/bin/pthost", ["demo"], TimeSpan.FromMinutes(1));
            Assert.True(demo.Exit == 0, demo.Stdout + demo.Stderr);
            Assert.EndsWith("demo: demo OK", demo.Stdout.Trim(), StringComparison.Ordinal);

            foreach (string name in Units)
            {
                // Where systemd is not PID 1, verify still checks the unit against the installed system (a template as its instance "i").
                var verify = await PtProcess.RunAsync("systemd-analyze", ["verify", $"/lib/systemd/system/{name}"], TimeSpan.FromMinutes(1));
                Assert.True(verify.Exit == 0 && verify.Stderr.Trim().Length == 0, $"verify {name}: exit {verify.Exit}: {verify.Stderr}");
            }
            await ServeAsUnitsAsync("");
        }
        finally
        {
            await RunOkAsync(Sudo("dpkg"), [.. SudoArgs, "--purge", "pthost"]);
        }
        Assert.Equal("", (await PtProcess.RunAsync("dpkg-query", "-W", "-f=${Status}", "pthost")).Stdout.Trim());
        var left = packaged.Where(f => f != "/." && (File.Exists(f) || (Directory.Exists(f) && f.StartsWith("/etc/pthost", StringComparison.Ordinal)))).ToList();
        Assert.True(left.Count == 0, "left behind: " + string.Join(", ", left));
        Assert.False(Directory.Exists("/etc/pthost"), "/etc/pthost is left behind");
    }

    [Fact]
    public async Task A_scratch_root_install_serves_too_and_purge_leaves_no_file()
    {
        // The same package installed with dpkg --root, for machines where the test may not own /usr/bin.
        using var root = await ScratchRoot.InstallAsync(await s_deb.Value);
        Assert.Contains("ii  pthost", await RunOkAsync("dpkg", "--root=" + root.Path, "-l", "pthost"), StringComparison.Ordinal);
        await ServeAsUnitsAsync(root.Path);
        await RunOkAsync("dpkg", "--root=" + root.Path, "--force-script-chrootless", "--purge", "pthost");
        Assert.Empty(root.FilesOutsideDpkg());
    }

    /// <summary>
    /// Starts the zephyr, jet and asport relays installed under <paramref name="root"/> ("" for /) as their units
    /// start them, each with a NOTIFY_SOCKET of the test's, and checks READY=1 and that each serves. The operator's
    /// edits: port 0 instead of the defaults (8888, 8080, 4433), which may be taken here, and asport's own
    /// certificate, key and users (not shipped); the asport files are removed again, as an operator would before purge.
    /// </summary>
    private static async Task ServeAsUnitsAsync(string root)
    {
        await File.WriteAllTextAsync(root + "/etc/pthost/zephyr.json", "{\"listen\": \"127.0.0.1:0\", \"stats-interval\": 3600}\n");
        await File.WriteAllTextAsync(root + "/etc/pthost/jet.json", "{\"listen\": \"127.0.0.1:0\"}\n");
        {
            using var notify = new SystemdNotifyTests.NotifySocket();
            await using var zephyr = StartUnit(root, "zephyr", notify.Environment);
            Assert.Equal("READY=1", await notify.ReceiveAsync(TimeSpan.FromSeconds(20)));
            var listen = IPEndPoint.Parse((await zephyr.WaitForLineAsync("LISTEN zephyr ")).Split(' ')[2]);
            using (var tcp = new TcpClient())
            {
                await tcp.ConnectAsync(listen);
                // The relay writes the new connection its assignment once it has accepted it (spec/zephyr.md):
                // read it, so the SIGTERM below cannot overtake the accept.
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                Assert.True(await tcp.GetStream().ReadAsync(new byte[64], cts.Token) > 0, "the relay sent no assignment");
            }
            zephyr.Signal(15);
            Assert.Equal(0, await zephyr.WaitForExitAsync());
            Assert.Contains(zephyr.StdoutLines, l => l.StartsWith("STATUS TRANSPORT=zephyr ", StringComparison.Ordinal) && l.Contains(" ACCEPTED=1 ", StringComparison.Ordinal));
        }
        {
            using var notify = new SystemdNotifyTests.NotifySocket();
            await using var jet = StartUnit(root, "jet", notify.Environment);
            Assert.Equal("READY=1", await notify.ReceiveAsync(TimeSpan.FromSeconds(20)));
            string http = (await jet.WaitForLineAsync("LISTEN jet ")).Split(' ')[2];
            using var client = new HttpClient();
            string id = Guid.NewGuid().ToString();
            using var response = await client.PostAsync($"http://{http}/jet/association/{id}", null);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Contains(id, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            jet.Signal(15);
            Assert.Equal(0, await jet.WaitForExitAsync());
        }
        await ServeAsTemplateUnitsAsync(root);
        string defaults = await File.ReadAllTextAsync(root + "/etc/default/pthost-asport");
        string[] asportFiles = ["asport.json", "cert.pem", "key.pem"];
        try
        {
            AsportRelayProcess.WriteConfig(root + "/etc/pthost");
            await File.WriteAllTextAsync(root + "/etc/default/pthost-asport", "PTHOST_ASPORT_LISTEN=\"127.0.0.1:0\"\nPTHOST_ASPORT_OPTIONS=\"\"\n");
            using var notify = new SystemdNotifyTests.NotifySocket();
            await using var asport = StartUnit(root, "asport", notify.Environment);
            Assert.Equal("READY=1", await notify.ReceiveAsync(TimeSpan.FromSeconds(20)));
            var listen = IPEndPoint.Parse((await asport.WaitForLineAsync("LISTEN asport ")).Split(' ')[2]);
            // It serves: an ASPORT client registers over QUIC, and a TCP connection to its public port reaches the client's service.
            var body = RandomNumberGenerator.GetBytes(256 << 10);
            await using var web = new HttpFileServer(body);
            await using var registered = new AsportRelayClient(AsportRelayProcess.ClientOptions(listen, new IPEndPoint(IPAddress.Loopback, web.Port)), NullLogger.Instance);
            registered.Start();
            int port = await registered.Registered.WaitAsync(TimeSpan.FromSeconds(30));
            using var http = new HttpClient();
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await http.GetByteArrayAsync($"http://127.0.0.1:{port}/f")));
            asport.Signal(15);
            Assert.Equal(0, await asport.WaitForExitAsync());
        }
        finally
        {
            foreach (string f in asportFiles) File.Delete(root + "/etc/pthost/" + f);
            await File.WriteAllTextAsync(root + "/etc/default/pthost-asport", defaults);
        }
    }

    /// <summary>
    /// The template units (docs/deploy.md §2): pthost-zephyr@1 and pthost-zephyr@2 side by side, each with its own
    /// /etc/pthost/zephyr-N.json, and pthost-jet@1 with its own /etc/default/pthost-jet-1 giving it a metrics address.
    /// The operator's files are removed again, so that purge leaves nothing.
    /// </summary>
    private static async Task ServeAsTemplateUnitsAsync(string root)
    {
        string[] files = ["/etc/pthost/zephyr-1.json", "/etc/pthost/zephyr-2.json", "/etc/pthost/jet-1.json", "/etc/default/pthost-jet-1"];
        try
        {
            foreach (int n in new[] { 1, 2 })
                await File.WriteAllTextAsync($"{root}/etc/pthost/zephyr-{n}.json", $"{{\"listen\": \"127.0.0.1:0\", \"instance\": \"zephyr-{n}\", \"stats-interval\": 3600}}\n");
            using var notify1 = new SystemdNotifyTests.NotifySocket();
            using var notify2 = new SystemdNotifyTests.NotifySocket();
            await using var zephyr1 = StartUnit(root, "zephyr", notify1.Environment, "1");
            await using var zephyr2 = StartUnit(root, "zephyr", notify2.Environment, "2");
            Assert.Equal("READY=1", await notify1.ReceiveAsync(TimeSpan.FromSeconds(20)));
            Assert.Equal("READY=1", await notify2.ReceiveAsync(TimeSpan.FromSeconds(20)));
            var listens = new List<IPEndPoint>();
            foreach (var zephyr in new[] { zephyr1, zephyr2 })
            {
                var listen = IPEndPoint.Parse((await zephyr.WaitForLineAsync("LISTEN zephyr ")).Split(' ')[2]);
                listens.Add(listen);
                using var tcp = new TcpClient();
                await tcp.ConnectAsync(listen);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                Assert.True(await tcp.GetStream().ReadAsync(new byte[64], cts.Token) > 0, "the relay sent no assignment");
            }
            Assert.NotEqual(listens[0], listens[1]);

            await File.WriteAllTextAsync(root + "/etc/pthost/jet-1.json", "{\"listen\": \"127.0.0.1:0\", \"instance\": \"jet-1\"}\n");
            await File.WriteAllTextAsync(root + "/etc/default/pthost-jet-1", "PTHOST_JET_OPTIONS=\"--metrics 127.0.0.1:0\"\n");
            using var notify = new SystemdNotifyTests.NotifySocket();
            await using var jet = StartUnit(root, "jet", notify.Environment, "1");
            Assert.Equal("READY=1", await notify.ReceiveAsync(TimeSpan.FromSeconds(20)));
            string line = await jet.WaitForLineAsync("LISTEN jet ");
            string http = line.Split(' ')[2];
            using var client = new HttpClient();
            using var response = await client.PostAsync($"http://{http}/jet/association/{Guid.NewGuid()}", null);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("jet-1", response.Headers.GetValues("Jet-Instance").Single());
            // The per-instance environment file reached the command line: the instance serves metrics.
            string metrics = Assert.Single(line.Split(' '), w => w.StartsWith("metrics=", StringComparison.Ordinal))["metrics=".Length..];
            Assert.Contains("pthost_instance_info{id=\"jet-1\"", await client.GetStringAsync($"http://{metrics}/metrics"), StringComparison.Ordinal);
            foreach (var p in new[] { zephyr1, zephyr2, jet })
            {
                p.Signal(15);
                Assert.Equal(0, await p.WaitForExitAsync());
            }
        }
        finally
        {
            foreach (string f in files) File.Delete(root + f);
        }
    }

    /// <summary>dpkg needs root: CI runs as root; elsewhere the test asks sudo, without a password prompt.</summary>
    private static string Sudo(string file) => Environment.UserName == "root" ? file : "sudo";

    private static string[] SudoArgs => Environment.UserName == "root" ? [] : ["-n", "dpkg"];

    /// <summary>
    /// What systemd does with the unit's ExecStart (systemd.service(5), "Command lines"): the
    /// EnvironmentFile's assignments, <c>$VAR</c> split into words, <c>${VAR}</c> one word; absolute
    /// paths of the package taken inside <paramref name="root"/> ("" for /). The unit's own file is the one installed.
    /// </summary>
    private static PtProcess StartUnit(string root, string relay, Dictionary<string, string> env, string? instance = null)
    {
        // A template unit (pthost-RELAY@.service) started as pthost-RELAY@INSTANCE: systemd puts the instance where %i stands.
        string name = instance is null ? $"pthost-{relay}.service" : $"pthost-{relay}@{instance}.service";
        var unit = File.ReadAllLines(instance is null ? $"{root}/lib/systemd/system/{name}" : $"{root}/lib/systemd/system/pthost-{relay}@.service")
            .Select(l => instance is null ? l : l.Replace("%i", instance, StringComparison.Ordinal)).ToArray();
        string condition = Assert.Single(unit, l => l.StartsWith("ConditionPathExists=", StringComparison.Ordinal))["ConditionPathExists=".Length..];
        Assert.True(File.Exists(root + condition), $"{name} would not start: {condition} is missing");
        string execStart = Assert.Single(unit, l => l.StartsWith("ExecStart=", StringComparison.Ordinal))["ExecStart=".Length..];
        string environmentFile = Assert.Single(unit, l => l.StartsWith("EnvironmentFile=-", StringComparison.Ordinal))["EnvironmentFile=-".Length..];
        // "-": a missing file is no error (systemd.exec(5)).
        var variables = (File.Exists(root + environmentFile) ? File.ReadAllLines(root + environmentFile) : [])
            .Where(l => l.Length > 0 && l[0] != '#')
            .Select(l => l.Split('=', 2))
            .ToDictionary(kv => kv[0], kv => kv[1].Trim('"'));
        var words = new List<string>();
        foreach (string word in execStart.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (word.StartsWith("${", StringComparison.Ordinal)) words.Add(variables.GetValueOrDefault(word[2..^1], ""));
            else if (word.StartsWith('$')) words.AddRange(variables.GetValueOrDefault(word[1..], "").Split(' ', StringSplitOptions.RemoveEmptyEntries));
            else words.Add(word.StartsWith("/usr/", StringComparison.Ordinal) || word.StartsWith("/etc/", StringComparison.Ordinal) ? root + word : word);
        }
        Assert.Equal(root + "/usr/bin/pthost", words[0]);
        Assert.Contains(instance is null ? $"{root}/etc/pthost/{relay}.json" : $"{root}/etc/pthost/{relay}-{instance}.json", words);
        return PtProcess.Start(words[0], words.Skip(1), env);
    }

    [GeneratedRegex(@"Overall exposure level for \S+: (\d+\.\d+) ")]
    private static partial Regex ExposureLine();

    private static async Task<string> RunOkAsync(string file, params string[] args)
    {
        var r = await PtProcess.RunAsync(file, args, TimeSpan.FromMinutes(2));
        Assert.True(r.Exit == 0, $"{file} {string.Join(' ', args)}: exit {r.Exit}: {r.Stderr}");
        return r.Stdout;
    }

    private static async Task<(int Exit, string Stdout, string Stderr)> RunWithEnvironmentAsync(string file, string[] args, Dictionary<string, string> env)
    {
        await using var p = PtProcess.Start(file, args, env);
        int exit = await p.WaitForExitAsync(TimeSpan.FromMinutes(1));
        return (exit, string.Join('\n', p.StdoutLines), p.Stderr);
    }

    /// <summary>
    /// An empty root with its own dpkg database; the package is installed into it with
    /// <c>dpkg --root</c> (maintainer scripts run on the host: --force-script-chrootless; the
    /// root has no libraries, hence --force-depends). systemd's own units are copied beside ours
    /// so that <c>systemd-analyze verify --root</c> can resolve the dependencies.
    /// </summary>
    private sealed class ScratchRoot : IDisposable
    {
        private ScratchRoot(string path) => Path = path;

        public string Path { get; }

        public static async Task<ScratchRoot> InstallAsync(string deb)
        {
            var root = new ScratchRoot(Directory.CreateTempSubdirectory("pthost-root-").FullName);
            Directory.CreateDirectory(root.Path + "/var/lib/dpkg/info");
            Directory.CreateDirectory(root.Path + "/var/lib/dpkg/updates");
            await File.WriteAllTextAsync(root.Path + "/var/lib/dpkg/status", "");
            await RunOkAsync("dpkg", "--root=" + root.Path, "--force-script-chrootless", "--force-depends", "--install", deb);
            return root;
        }

        /// <summary>systemd's targets and slices (from the host's /lib/systemd/system), which our units depend on.</summary>
        public Task AddSystemdOwnUnitsAsync() =>
            RunOkAsync("sh", "-c", "cp -a /lib/systemd/system/*.target /lib/systemd/system/*.slice \"$1\"", "sh", Path + "/lib/systemd/system/");

        /// <summary>Every file and directory left outside dpkg's own database.</summary>
        public List<string> FilesOutsideDpkg() =>
            Directory.EnumerateFileSystemEntries(Path, "*", SearchOption.AllDirectories)
                .Select(f => f[Path.Length..])
                .Where(f => f != "/var" && f != "/var/lib" && !f.StartsWith("/var/lib/dpkg", StringComparison.Ordinal))
                .ToList();

        public void Dispose() => Directory.Delete(Path, true);
    }
}
