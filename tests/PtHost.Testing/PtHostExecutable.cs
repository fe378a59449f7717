namespace PtHost.Testing;

/// <summary>
/// The real published executable: <c>$PTHOST_EXE</c> when set (the test command publishes
/// <c>out/pthost</c> first), otherwise published once per test run into a temporary directory.
/// </summary>
public static class PtHostExecutable
{
    private static readonly Lazy<string> s_path = new(Locate, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string Path => s_path.Value;

    public static string RepoRoot { get; } = FindRepoRoot();

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "PtHost.sln"))) return dir.FullName;
        throw new InvalidOperationException("PtHost.sln not found above " + AppContext.BaseDirectory);
    }

    private static string Locate()
    {
        string? env = Environment.GetEnvironmentVariable("PTHOST_EXE");
        if (!string.IsNullOrEmpty(env))
        {
            if (!File.Exists(env)) throw new FileNotFoundException("PTHOST_EXE does not exist", env);
            return env;
        }
        string outDir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "pthost-test-publish-" + Environment.ProcessId);
        // Blocking is fine here: once per test run, before any process test starts.
        DotnetCommand.RunAsync("publish", System.IO.Path.Combine(RepoRoot, "src", "PtHost"), outDir).GetAwaiter().GetResult();
        return System.IO.Path.Combine(outDir, "pthost");
    }
}
