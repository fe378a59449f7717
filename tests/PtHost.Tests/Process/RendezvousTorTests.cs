using System.Diagnostics;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using PtHost.Net.Signals;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// A real Tor private network (spec/rendezvous.md §8) in one loopback-only network namespace: a directory
/// authority and two relays (TestingTorNetwork, all exits to 127.0.0.0/8), three bridges whose
/// ServerTransportPlugin is pthost with zephyr, jet and asport signalling through a rendezvous, the
/// zephyr/jet/asport relays and the rendezvous, and three tor clients whose ClientTransportPlugin is pthost,
/// each given the bridge line built from its bridge's SMETHOD line. Each client reaches Bootstrapped 100%
/// and fetches a file from an HTTP server in the namespace through the network, SHA-256 checked.
/// </summary>
[Collection("process")]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class RendezvousTorTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Bootstrap = TimeSpan.FromSeconds(300);
    private const string Rendezvous = "http://127.0.0.1:7520";
    private const int WebPort = 8080, AuthOrPort = 5000, AuthDirPort = 7000;

    [Fact]
    public async Task Tor_clients_bootstrap_and_fetch_through_bridges_of_zephyr_jet_and_asport_signalling_through_a_rendezvous()
    {
        var watch = Stopwatch.StartNew();
        await using var net = await LoopbackNamespace.CreateAsync();
        string dir = net.Directory;
        string pthost = PtHostExecutable.Path;

        // The file, served inside the namespace.
        var body = RandomNumberGenerator.GetBytes(2 << 20);
        string web = Path.Combine(dir, "web");
        Directory.CreateDirectory(web);
        await File.WriteAllBytesAsync(Path.Combine(web, "file.bin"), body);
        net.Start(File.Exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3", ["-m", "http.server", WebPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--directory", web]);

        // The rendezvous and the three transports' relays.
        var rendezvous = net.Start(pthost, ["relay", "rendezvous", "--listen", "127.0.0.1:7520"]);
        Assert.StartsWith("LISTEN rendezvous 127.0.0.1:7520 http", await rendezvous.ReadLineAsync());
        var zephyrRelay = net.Start(pthost, ["relay", "zephyr", "--listen", "127.0.0.1:7600"]);
        Assert.StartsWith("LISTEN zephyr ", await zephyrRelay.ReadLineAsync());
        string jetConfig = Path.Combine(dir, "jet-relay.json");
        await File.WriteAllTextAsync(jetConfig, """{"tls": false, "wss": false}""");
        var jetRelay = net.Start(pthost, ["relay", "jet", "--listen", "127.0.0.1:7700", "--config", jetConfig]);
        Assert.StartsWith("LISTEN jet ", await jetRelay.ReadLineAsync());
        string asportDir = Path.Combine(dir, "asport");
        Directory.CreateDirectory(asportDir);
        string asportConfig = AsportRelayProcess.WriteConfig(asportDir, extra: new JObject { ["users"] = new JObject { [AsportRelayProcess.User.ToString()] = "staple" } });
        var asportRelay = net.Start(pthost, ["relay", "asport", "--listen", "127.0.0.1:7800", "--config", asportConfig]);
        Assert.StartsWith("LISTEN asport ", await asportRelay.ReadLineAsync());

        // The directory authority (chutney's recipe: tor-gencert, then the relay fingerprint).
        string authData = Path.Combine(dir, "auth");
        Directory.CreateDirectory(Path.Combine(authData, "keys"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.SetUnixFileMode(authData, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var (rc, _, err) = await PtProcess.RunAsync("/bin/sh", ["-c", $"echo test | tor-gencert --create-identity-key --passphrase-fd 0 -i {authData}/keys/authority_identity_key -s {authData}/keys/authority_signing_key -c {authData}/keys/authority_certificate -m 12 -a 127.0.0.1:{AuthDirPort}"]);
        Assert.True(rc == 0, "tor-gencert: " + err);
        string v3ident = File.ReadLines(Path.Combine(authData, "keys", "authority_certificate")).First(l => l.StartsWith("fingerprint ", StringComparison.Ordinal)).Split(' ')[1];
        var (frc, fout, ferr) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", net.Name, File.Exists("/usr/bin/tor") ? "/usr/bin/tor" : "/usr/sbin/tor", "--ignore-missing-torrc", "-f", "/dev/null", "--DataDirectory", authData,
            "--ORPort", AuthOrPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--Nickname", "auth", "--list-fingerprint"]);
        Assert.True(frc == 0, "tor --list-fingerprint: " + ferr + fout);
        string authFingerprint = string.Concat(fout.Trim().Split('\n')[^1].Split(' ').Skip(1));
        string common = $"""
            TestingTorNetwork 1
            DirAuthority auth orport={AuthOrPort} no-v2 v3ident={v3ident} 127.0.0.1:{AuthDirPort} {authFingerprint}
            PathsNeededToBuildCircuits 0.25
            TestingDirAuthVoteExit *
            TestingDirAuthVoteGuard *
            TestingDirAuthVoteHSDir *
            TestingMinExitFlagThreshold 0
            V3AuthNIntervalsValid 2
            AssumeReachable 1
            SafeLogging 0
            ShutdownWaitLength 0
            ClientUseIPv6 0
            """;
        // chutney's exit policy: the microdescriptor's policy summary leaves private ranges out, so a relay
        // accepting only 127.0.0.0/8 would look like no exit at all to the clients. The namespace has only loopback.
        const string exit = """
            ExitRelay 1
            ExitPolicyRejectPrivate 0
            ExitPolicy accept 127.0.0.0/8:*
            ExitPolicy accept private:*
            ExitPolicy accept *:*
            """;
        var auth = net.Tor("auth", $"""
            {common}
            Nickname auth
            SocksPort 0
            Address 127.0.0.1
            ORPort 127.0.0.1:{AuthOrPort}
            DirPort 127.0.0.1:{AuthDirPort}
            AuthoritativeDirectory 1
            V3AuthoritativeDirectory 1
            ContactInfo auth@test.test
            TestingV3AuthInitialVotingInterval 20
            TestingV3AuthInitialVoteDelay 4
            TestingV3AuthInitialDistDelay 4
            V3AuthVotingInterval 20
            V3AuthVoteDelay 4
            V3AuthDistDelay 4
            {exit}
            """);
        for (int i = 1; i <= 2; i++)
            net.Tor($"relay{i}", $"""
                {common}
                Nickname relay{i}
                SocksPort 0
                Address 127.0.0.1
                ORPort 127.0.0.1:{AuthOrPort + i}
                DirPort 127.0.0.1:{AuthDirPort + i}
                {exit}
                """);

        // Three bridges; each pthost's stdout is copied to a file so the test reads the SMETHOD line tor got.
        var transports = new (string Name, int OrPort, int PtPort, string Options)[]
        {
            ("zephyr", 5101, 9101, "relay=127.0.0.1:7600"),
            ("jet", 5102, 9102, "relay=http://127.0.0.1:7700"),
            ("asport", 5103, 9103, $"server=127.0.0.1:7800 pin={Convert.ToHexStringLower(AsportRelayProcess.Cert.Sha256)} user={AsportRelayProcess.User} password=staple ports=20000-60000"),
        };
        var secrets = new Dictionary<string, string>();
        foreach (var (name, orPort, ptPort, options) in transports)
        {
            secrets[name] = RendezvousKeys.NewSecret();
            string wrapper = Wrapper(dir, $"server-{name}", pthost);
            net.Tor($"bridge-{name}", $"""
                {common}
                Nickname bridge{name}
                SocksPort 0
                Address 127.0.0.1
                ORPort 127.0.0.1:{orPort}
                BridgeRelay 1
                PublishServerDescriptor 0
                ExtORPort auto
                ServerTransportPlugin {name} exec {wrapper}
                ServerTransportListenAddr {name} 127.0.0.1:{ptPort}
                ServerTransportOptions {name} rendezvous={Rendezvous} secret={secrets[name]} {options}
                """);
        }

        // Each client gets the bridge line its bridge's SMETHOD line gives (spec/rendezvous.md §7.3).
        var clients = new List<(string Name, TorProcess Tor, int Socks, string Bridge)>();
        int socks = 9051;
        foreach (var (name, _, _, _) in transports)
        {
            string smethod = await WaitForLineAsync(Path.Combine(dir, $"server-{name}.stdout"), $"SMETHOD {name} ");
            string fingerprint = await WaitForFingerprintAsync(Path.Combine(dir, $"bridge-{name}", "fingerprint"));
            string bridge = BridgeLineOf(smethod, fingerprint);
            output.WriteLine($"{name}: {smethod}\n  bridge line ({BridgeArgsLength(bridge)} bytes of arguments): Bridge {bridge}");
            Assert.Contains($"rendezvous={Rendezvous}", bridge, StringComparison.Ordinal);
            Assert.Contains($"secret={secrets[name]}", bridge, StringComparison.Ordinal);
            Assert.True(BridgeArgsLength(bridge) <= 510, "the arguments must fit RFC 1929's username and password");
            string wrapper = Wrapper(dir, $"client-{name}", pthost);
            var tor = net.Tor($"client-{name}", $"""
                {common}
                SocksPort 127.0.0.1:{socks}
                UseBridges 1
                Bridge {bridge}
                ClientTransportPlugin {name} exec {wrapper}
                """);
            clients.Add((name, tor, socks, bridge));
            socks++;
        }

        foreach (var (name, tor, port, bridge) in clients)
        {
            await tor.WaitForLogAsync("Bootstrapped 100%", Bootstrap);
            output.WriteLine($"{name}: client bootstrapped 100% after {watch.Elapsed.TotalSeconds:0} s");
            string file = Path.Combine(dir, $"got-{name}");
            (rc, _, err) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", net.Name, "curl", "-sS", "--max-time", "90",
                "--socks5-hostname", $"127.0.0.1:{port}", "-o", file, $"http://127.0.0.1:{WebPort}/file.bin"], TimeSpan.FromSeconds(120));
            Assert.True(rc == 0, $"{name}: curl through tor: {err}\n{tor.Output}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
            output.WriteLine($"{name}: 2 MiB fetched through the Tor network intact after {watch.Elapsed.TotalSeconds:0} s");
            // The signals crossed the rendezvous only: neither pthost wrote a CMESSAGE or SMESSAGE line.
            string clientOut = await File.ReadAllTextAsync(Path.Combine(dir, $"client-{name}.stdout"));
            string serverOut = await File.ReadAllTextAsync(Path.Combine(dir, $"server-{name}.stdout"));
            Assert.DoesNotContain((clientOut + serverOut).Split('\n'), l => l.StartsWith("CMESSAGE", StringComparison.Ordinal) || l.StartsWith("SMESSAGE", StringComparison.Ordinal));
            Assert.Contains($"SMETHOD {name} ", serverOut, StringComparison.Ordinal);
            Assert.Contains($"CMETHOD {name} socks5 ", clientOut, StringComparison.Ordinal);
            // The client's route is the bridge line's: its channel is the one the bridge's secret opens.
            Assert.Contains(RendezvousKeys.Parse(secrets[name]).Channel, await File.ReadAllTextAsync(Path.Combine(dir, $"client-{name}.stderr")), StringComparison.Ordinal);
        }
        _ = auth;
    }

    /// <summary>A script tor runs as the PT: pthost with its stdout copied to ROLE.stdout and stderr to ROLE.stderr.</summary>
    private static string Wrapper(string dir, string role, string pthost)
    {
        string path = Path.Combine(dir, role + ".sh");
        File.WriteAllText(path, $"#!/bin/bash\nexec {pthost} \"$@\" 2>>{dir}/{role}.stderr > >(tee -a {dir}/{role}.stdout)\n");
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        return path;
    }

    private static async Task<string> WaitForLineAsync(string file, string prefix)
    {
        string? line = null;
        bool found = await Eventually.HoldsWithinAsync(() =>
        {
            line = File.Exists(file) ? File.ReadLines(file).FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal)) : null;
            return line is not null;
        }, TimeSpan.FromSeconds(120));
        Assert.True(found, $"{file} never had a line starting \"{prefix}\"");
        return line!;
    }

    private static async Task<string> WaitForFingerprintAsync(string file)
    {
        string? fp = null;
        bool found = await Eventually.HoldsWithinAsync(() =>
        {
            fp = File.Exists(file) ? File.ReadAllText(file).Trim().Split(' ').ElementAtOrDefault(1) : null;
            return fp is { Length: 40 };
        }, TimeSpan.FromSeconds(120));
        Assert.True(found, $"{file} never held a fingerprint");
        return fp!;
    }

    /// <summary>
    /// The bridge line tor derives from <c>SMETHOD t ADDR ARGS:k=v,...</c> (pt-spec §3.3.3: ',' separates, '\' escapes):
    /// <c>t ADDR FINGERPRINT k=v k=v</c>.
    /// </summary>
    internal static string BridgeLineOf(string smethod, string fingerprint)
    {
        var parts = smethod.Split(' ', 4);
        var args = new List<string>();
        if (parts.Length == 4 && parts[3].StartsWith("ARGS:", StringComparison.Ordinal))
        {
            var current = new System.Text.StringBuilder();
            string text = parts[3][5..];
            for (int i = 0; i < text.Length; i++)
            {
                if (text[i] == '\\' && i + 1 < text.Length) current.Append(text[++i]);
                else if (text[i] == ',') { args.Add(current.ToString()); current.Clear(); }
                else current.Append(text[i]);
            }
            args.Add(current.ToString());
        }
        return $"{parts[1]} {parts[2]} {fingerprint} {string.Join(' ', args)}";
    }

    /// <summary>What tor puts in the SOCKS username and password: the arguments joined by ';'.</summary>
    private static int BridgeArgsLength(string bridge) => string.Join(';', bridge.Split(' ').Skip(3)).Length;
}
