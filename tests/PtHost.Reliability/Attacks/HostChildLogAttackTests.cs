using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, point 8: a hosted PT 1.0 program (spec/external.md) writes LOG lines and stderr that pthost copies
/// into its own log. A line break in that text (PT 1.0's <c>\r\n</c> quoting, a raw CR on stderr, VT, FF, NEL,
/// U+2028) would start a new pthost log line of the child's making. spec/external.md §4.7: each becomes an escape.
/// </summary>
public class HostChildLogAttackTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_child_cannot_forge_a_log_line_of_pthost()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-childlog-").FullName;
        try
        {
            string script = Path.Combine(dir, "pt.sh");
            // The LOG message uses PT 1.0's C-style quoting (\r\n; printf %s writes it as it is, where sh's echo would
            // turn it into CR LF), plus raw VT, FF, NEL and U+2028; the stderr line carries a raw CR. Each tries to begin
            // a line that reads like pthost's own.
            await File.WriteAllTextAsync(script, string.Join('\n',
                "#!/bin/sh",
                "echo 'VERSION 1'",
                "printf '%s\\n' 'LOG SEVERITY=warning MESSAGE=\"harmless\\r\\nfail: PtHost[0] forged-by-quoting\u000bfail: PtHost[0] forged-by-vt\u000cfail: PtHost[0] forged-by-ff\u0085fail: PtHost[0] forged-by-nel\u2028fail: PtHost[0] forged-by-ls\"'",
                "printf 'stderr text\\rfail: PtHost[0] forged-by-cr\\n' >&2",
                "echo 'CMETHOD fake socks5 127.0.0.1:9'",
                "echo 'CMETHODS DONE'",
                "cat >/dev/null",
                ""));
            if (OperatingSystem.IsLinux()) File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var config = new JObject
            {
                ["role"] = "client",
                ["transports"] = new JArray("external"),
                ["state"] = dir,
                ["options"] = new JObject { ["external"] = new JObject { ["exec"] = script, ["method"] = "fake", ["startTimeout"] = 20 } },
                ["exit-on-stdin-close"] = true,
            };
            await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
            var lines = await p.ReadUntilDoneAsync();
            Assert.Contains(lines, l => l.StartsWith("CMETHOD external socks5 ", StringComparison.Ordinal));
            await p.WaitForStderrAsync("forged-by-ls");
            await p.WaitForStderrAsync("forged-by-cr");

            // Read pthost's stderr as a log reader would: every line break .NET's reader knows (LF, CR, CRLF), and
            // the other Unicode line terminators too.
            var logLines = p.Stderr.Split(['\n', '\r', '\u000b', '\u000c', '\u0085', '\u2028', '\u2029']);
            foreach (var l in logLines.Where(l => l.Contains("forged", StringComparison.Ordinal))) output.WriteLine(l);
            var forged = logLines.Where(l => l.Contains("forged", StringComparison.Ordinal) && !l.Contains("external: fake: ", StringComparison.Ordinal)
            && !l.Contains("external: [fake stderr] ", StringComparison.Ordinal)).ToList();
            Assert.True(forged.Count == 0, $"{forged.Count} log lines of the child's making:\n{string.Join("\n", forged)}");
            Assert.Contains(@"external: fake: harmless\r\nfail: PtHost[0] forged-by-quoting\x0Bfail: PtHost[0] forged-by-vt\x0Cfail: PtHost[0] forged-by-ff\x85fail: PtHost[0] forged-by-nel\u2028fail: PtHost[0] forged-by-ls", p.Stderr);
            // pthost reads the child's stderr by lines (LF, CR or CRLF): the CR ends one, and each is logged with the prefix.
            Assert.Contains("external: [fake stderr] fail: PtHost[0] forged-by-cr", p.Stderr);
            p.AssertOnlyProtocolLinesOnStdout();
        }
        finally { Directory.Delete(dir, true); }
    }
}
