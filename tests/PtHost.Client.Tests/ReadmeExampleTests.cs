using System.Diagnostics;
using System.Text.RegularExpressions;

namespace PtHost.Client.Tests;

/// <summary>
/// The PtHost.Embedded (HttpClient) and PtHost.AspNetCore (Kestrel) README examples, as written, built as the
/// Program.cs of new console projects that reference the packages' projects, and run against real pthost processes.
/// </summary>
public sealed partial class ReadmeExampleTests
{
    [GeneratedRegex("```csharp\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CodeBlock();

    [GeneratedRegex(@"^plain server at (\S+)$")]
    private static partial Regex KestrelLine();

    private static async Task<string> BuildExampleAsync(string scratch, string package, string sdk)
    {
        string app = Path.Combine(scratch, package);
        Directory.CreateDirectory(app);
        string project = Path.Combine(PtHostExecutable.RepoRoot, "src", package, package + ".csproj");
        await File.WriteAllTextAsync(Path.Combine(app, "Example.csproj"), $"""
            <Project Sdk="{sdk}">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
              </PropertyGroup>
              <ItemGroup>
                <ProjectReference Include="{project}" />
              </ItemGroup>
            </Project>
            """);
        string readme = await File.ReadAllTextAsync(Path.Combine(PtHostExecutable.RepoRoot, "src", package, "README.md"));
        await File.WriteAllTextAsync(Path.Combine(app, "Program.cs"), CodeBlock().Match(readme).Groups[1].Value);
        string output = Path.Combine(app, "out");
        await DotnetCommand.RunAsync("build", app, output);
        return Path.Combine(output, "Example");
    }

    [Fact]
    public async Task EmbeddedAndKestrelReadmeExamplesRun()
    {
        string scratch = Directory.CreateTempSubdirectory("pthost-readme-examples-").FullName;
        try
        {
            string embedded = await BuildExampleAsync(scratch, "PtHost.Embedded", "Microsoft.NET.Sdk");
            string kestrel = await BuildExampleAsync(scratch, "PtHost.AspNetCore", "Microsoft.NET.Sdk.Web");

            // PtHost.Embedded: HttpClient in process through a plain server process.
            await using (var web = new HttpFileServer(Support.Body))
            await using (var server = await Support.FreePlainServerAsync())
            {
                var psi = new ProcessStartInfo(embedded) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                psi.ArgumentList.Add(server.EndPoint.ToString());
                psi.ArgumentList.Add($"http://127.0.0.1:{web.Port}/file");
                using var p = Process.Start(psi)!;
                var output = Task.WhenAll(p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
                await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
                var text = await output;
                Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {text[1]}");
                Assert.Equal(Support.Body.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), text[0].Trim());
            }

            // PtHost.AspNetCore: the minimal API over plain, reached with curl through a pthost client process.
            var kpsi = new ProcessStartInfo(kestrel) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
            using var k = Process.Start(kpsi)!;
            try
            {
                string? line = await k.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
                var m = KestrelLine().Match(line ?? "");
                Assert.True(m.Success, $"the Kestrel example printed '{line}'");
                await using var client = await PtHostClient.StartAsync(Support.PlainClient(System.Net.IPEndPoint.Parse(m.Groups[1].Value)), Support.Options());
                var curl = new ProcessStartInfo("curl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                foreach (var a in (string[])["-sS", "--max-time", "30", "--socks5-hostname", client.GetSocksEndPoint("plain").ToString(), "http://example.invalid/"]) curl.ArgumentList.Add(a);
                using var c = Process.Start(curl)!;
                var got = Task.WhenAll(c.StandardOutput.ReadToEndAsync(), c.StandardError.ReadToEndAsync());
                await c.WaitForExitAsync();
                var body = await got;
                Assert.True(c.ExitCode == 0, $"curl exited {c.ExitCode}: {body[1]}");
                Assert.Equal("hello over a pluggable transport\n", body[0]);
            }
            finally
            {
                k.Kill();
                await k.WaitForExitAsync();
            }
        }
        finally
        {
            try { Directory.Delete(scratch, true); } catch (IOException) { }
        }
    }
}
