namespace PtHost.Testing;

/// <summary>
/// The real published executables. <see cref="Path"/>: <c>$PTHOST_EXE</c> when set (the test command
/// publishes the NativeAOT <c>out/pthost</c> first), otherwise the framework-dependent build published
/// once per test run into a temporary directory. <see cref="FrameworkDependentPath"/> is the build that
/// loads managed plugins (spec/ipc.md §8.5); <see cref="NativeAotPath"/> the one that cannot.
/// </summary>
public static class PtHostExecutable
{
    private static readonly Lazy<string> s_path = new(Locate, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<string> s_frameworkDependent = new(LocateFrameworkDependent, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<string> s_nativeAot = new(LocateNativeAot, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string Path => s_path.Value;

    /// <summary><c>$PTHOST_FD_EXE</c>; else <see cref="Path"/> when that is framework-dependent; else published once.</summary>
    public static string FrameworkDependentPath => s_frameworkDependent.Value;

    /// <summary><see cref="Path"/> when that is the NativeAOT build; else published once (minutes).</summary>
    public static string NativeAotPath => s_nativeAot.Value;

    /// <summary>Whether <paramref name="executable"/> is a NativeAOT build: a framework-dependent one has its pthost.dll beside it.</summary>
    public static bool IsNativeAot(string executable) =>
        !File.Exists(System.IO.Path.Combine(System.IO.Path.GetDirectoryName(executable)!, "pthost.dll"));

    public static string RepoRoot { get; } = FindRepoRoot();

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "PtHost.sln"))) return dir.FullName;
        throw new InvalidOperationException("PtHost.sln not found above " + AppContext.BaseDirectory);
    }

    private static string? FromEnvironment(string name)
    {
        string? env = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrEmpty(env)) return null;
        return File.Exists(env) ? env : throw new FileNotFoundException(name + " does not exist", env);
    }

    private static string Locate() => FromEnvironment("PTHOST_EXE") ?? Publish("fd");

    private static string LocateFrameworkDependent() =>
        FromEnvironment("PTHOST_FD_EXE") ?? (IsNativeAot(Path) ? Publish("fd") : Path);

    private static string LocateNativeAot() => IsNativeAot(Path) ? Path : Publish("aot", "-r", "linux-x64", "-p:PublishAot=true");

    /// <summary><c>dotnet publish src/PtHost</c> into a temporary directory; blocking is fine here: once per test run and build.</summary>
    private static string Publish(string kind, params string[] extra)
    {
        string outDir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"pthost-test-publish-{kind}-{Environment.ProcessId}");
        DotnetCommand.RunAsync("publish", System.IO.Path.Combine(RepoRoot, "src", "PtHost"), outDir, extra).GetAwaiter().GetResult();
        return System.IO.Path.Combine(outDir, "pthost");
    }
}
