using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Quic;
using PtHost.Transports.Asport;

namespace PtHost.Testing;

/// <summary>
/// A running <c>pthost relay asport --listen ADDRESS --config FILE</c> (spec/asport.md) with a fresh
/// self-signed certificate, one user, and the address and pin from its LISTEN line.
/// </summary>
public sealed class AsportRelayProcess : IAsyncDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);
    public static readonly QuicCertificate Cert = QuicCertificate.CreateSelfSigned("asport.test");
    public static readonly Guid User = Guid.Parse("6f0d0f5e-2b4c-4d6a-9c11-0123456789ab");
    public const string Password = "correct horse";

    public required PtProcess Process { get; init; }
    public required IPEndPoint EndPoint { get; init; }
    public required string Directory { get; init; }

    /// <summary>
    /// Options of an ASPORT client (<see cref="AsportRelayClient"/>) of a relay started with <see cref="WriteConfig"/>: this
    /// certificate pinned, the test user, TCP mode, public ports 20000–60000, forwarding to <paramref name="target"/>.
    /// </summary>
    public static AsportRelayClientOptions ClientOptions(IPEndPoint server, IPEndPoint target) => new()
    {
        Server = server,
        Verification = QuicPeerVerification.Pinned(Cert.Sha256),
        User = User,
        Password = Password,
        Mode = ForwardMode.Tcp,
        PortStart = 20000,
        PortEnd = 60000,
        LocalTarget = target,
    };

    /// <summary>Writes the certificate, key and asport.json into <paramref name="dir"/>; returns the config's path.</summary>
    /// <param name="extra">Further keys of the configuration (spec/asport.md §5), e.g. the connection caps.</param>
    public static string WriteConfig(string dir, bool replyAuthFailed = true, string ports = "20000-60000", string network = "127.0.0.0/8", int? associationTimeout = null, JObject? extra = null)
    {
        File.WriteAllText(Path.Combine(dir, "cert.pem"), Cert.CertificatePem);
        var key = Path.Combine(dir, "key.pem");
        File.Delete(key);
        PtHost.Net.PrivateFile.WriteNew(key, Cert.PrivateKeyPem); // 0600: the relay refuses a key open to others
        var config = new JObject
        {
            ["certificate"] = "cert.pem",
            ["key"] = "key.pem",
            ["users"] = new JObject { [User.ToString()] = Password },
            ["allowed_ports"] = new JArray(ports),
            ["allowed_networks"] = new JArray(network),
            ["reply_auth_failed"] = replyAuthFailed,
        };
        if (associationTimeout is { } t) config["association_timeout"] = t;
        if (extra is not null) config.Merge(extra);
        var path = Path.Combine(dir, "asport.json");
        File.WriteAllText(path, config.ToString());
        return path;
    }

    /// <param name="listen">127.0.0.1:0 unless a test restarts a relay on the port an earlier one reported.</param>
    public static async Task<AsportRelayProcess> StartAsync(string listen = "127.0.0.1:0", bool replyAuthFailed = true, string ports = "20000-60000", string network = "127.0.0.0/8", int? associationTimeout = null, JObject? extra = null)
    {
        var dir = System.IO.Directory.CreateTempSubdirectory("pthost-asport-").FullName;
        var config = WriteConfig(dir, replyAuthFailed, ports, network, associationTimeout, extra);
        var p = PtProcess.StartPthost("relay", "asport", "--listen", listen, "--config", config, "--loglevel", "debug");
        try
        {
            var line = await p.ReadLineAsync(Wait);
            Assert.StartsWith("LISTEN asport ", line, StringComparison.Ordinal);
            var parts = line.Split(' ');
            Assert.Equal("sha256=" + Convert.ToHexString(Cert.Sha256).ToLowerInvariant(), parts[3]);
            return new AsportRelayProcess { Process = p, EndPoint = IPEndPoint.Parse(parts[2]), Directory = dir };
        }
        catch
        {
            await p.DisposeAsync();
            throw;
        }
    }

    /// <summary>A relay inside <paramref name="ns"/>, listening on <paramref name="listen"/>, for clients from <paramref name="network"/>.</summary>
    public static async Task<AsportRelayProcess> StartInAsync(NetworkNamespace ns, string listen, string network)
    {
        var dir = System.IO.Directory.CreateTempSubdirectory("pthost-asport-").FullName;
        var config = WriteConfig(dir, network: network);
        var p = ns.Start(PtHostExecutable.Path, ["relay", "asport", "--listen", listen, "--config", config, "--loglevel", "debug"]);
        var line = await p.ReadLineAsync(Wait);
        Assert.StartsWith("LISTEN asport ", line, StringComparison.Ordinal);
        return new AsportRelayProcess { Process = p, EndPoint = IPEndPoint.Parse(line.Split(' ')[2]), Directory = dir };
    }

    public async ValueTask DisposeAsync()
    {
        await Process.DisposeAsync();
        try { System.IO.Directory.Delete(Directory, true); } catch (IOException) { }
    }
}
