namespace PtHost.Testing;

/// <summary>The Debian programs the tests drive (curl, coturn's tools, the proxies); the README's test command, test.sh, installs them.</summary>
public static class DebianPrograms
{
    public static string Require(string path) => File.Exists(path) ? path
        : throw new InvalidOperationException($"{path} is missing: run the README's test command (bash test.sh), which installs the Debian packages the tests use");

    public static string Curl => Require("/usr/bin/curl");
}
