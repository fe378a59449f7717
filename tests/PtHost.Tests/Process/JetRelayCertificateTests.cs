using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Net.Tls;

namespace PtHost.Tests.Process;

/// <summary>
/// spec/jet.md §7.4: without a pin the jet client checks a relay's certificate against the system's CAs with SNI equal to
/// the relay's name. A real relay process presents a certificate issued by a test CA for <c>localhost</c>; the client
/// pthost trusts it only when that CA is in its OpenSSL store (<c>SSL_CERT_FILE</c> or <c>SSL_CERT_DIR</c>), and refuses a
/// wrong name, an untrusted CA and an expired certificate with a log line that says which. The server pins the relay's
/// certificate (relayPins), so only the client's check decides.
/// </summary>
[Collection("process")]
public class JetRelayCertificateTests
{
    private const string RelayName = "localhost";

    public enum Case { TrustedByFile, TrustedByDirectory, UntrustedCa, WrongName, Expired }

    [Theory]
    [InlineData(Case.TrustedByFile)]
    [InlineData(Case.TrustedByDirectory)]
    [InlineData(Case.UntrustedCa)]
    [InlineData(Case.WrongName)]
    [InlineData(Case.Expired)]
    public async Task The_client_checks_the_relay_certificate_against_the_system_CAs_with_SNI(Case test)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-jet-ca-").FullName;
        var now = DateTimeOffset.UtcNow;
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var ca = MakeCa("PtHost test CA", caKey, now);
        using var otherKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var otherCa = MakeCa("PtHost other test CA", otherKey, now);
        using var leafKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var leaf = MakeLeaf(ca, leafKey, test == Case.WrongName ? "relay.invalid" : RelayName,
            test == Case.Expired ? now.AddDays(-10) : now.AddMinutes(-5), test == Case.Expired ? now.AddDays(-1) : now.AddDays(1));

        string certFile = Path.Combine(dir, "relay-cert.pem"), keyFile = Path.Combine(dir, "relay-key.pem");
        await File.WriteAllTextAsync(certFile, leaf.ExportCertificatePem());
        await File.WriteAllTextAsync(keyFile, leafKey.ExportPkcs8PrivateKeyPem());
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(keyFile, UnixFileMode.UserRead | UnixFileMode.UserWrite); // spec/ipc.md §3.7
        string caFile = Path.Combine(dir, "ca.pem"), otherCaFile = Path.Combine(dir, "other-ca.pem"), empty = Path.Combine(dir, "empty.pem");
        await File.WriteAllTextAsync(caFile, ca.ExportCertificatePem());
        await File.WriteAllTextAsync(otherCaFile, otherCa.ExportCertificatePem());
        await File.WriteAllTextAsync(empty, "");
        string caDir = Directory.CreateDirectory(Path.Combine(dir, "certs")).FullName;
        File.Copy(caFile, Path.Combine(caDir, "ptHost-test-ca.pem"));
        string emptyDir = Directory.CreateDirectory(Path.Combine(dir, "none")).FullName;
        // The client's trust store: the test CA as a file, as a directory, or only another CA.
        var env = test switch
        {
            Case.TrustedByDirectory => new Dictionary<string, string> { ["SSL_CERT_FILE"] = empty, ["SSL_CERT_DIR"] = caDir },
            Case.UntrustedCa => new Dictionary<string, string> { ["SSL_CERT_FILE"] = otherCaFile, ["SSL_CERT_DIR"] = emptyDir },
            _ => new Dictionary<string, string> { ["SSL_CERT_FILE"] = caFile, ["SSL_CERT_DIR"] = emptyDir },
        };

        var body = RandomNumberGenerator.GetBytes(100_000);
        await using var http = new HttpFileServer(body);
        await using var relay = await JetRelayProcess.StartAsync(new JObject
        {
            ["certificateFile"] = certFile,
            ["keyFile"] = keyFile,
            ["externalHost"] = RelayName,
        });
        string leafPin = PinnedTls.FormatPin(PinnedTls.Pin(leaf));
        await using var chain = await JetChain.StartAsync(relay,
            editClient: o => o.Remove("relayPins"), // no pin: the system's CAs and SNI decide
            editServer: o =>
            {
                o["kinds"] = new JArray("tls");
                o["candidateHosts"] = new JArray(RelayName);
                o["relayPins"] = new JObject { [RelayName] = leafPin };
            },
            clientEnvironment: env);

        var (exit, _, stderr) = await PtProcess.RunAsync(DebianPrograms.Curl, "-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(),
            "-o", Path.Combine(dir, "got.bin"), $"http://localhost:{http.Port}/file.bin");
        if (test is Case.TrustedByFile or Case.TrustedByDirectory)
        {
            Assert.True(exit == 0, $"curl: {stderr}\nclient:\n{chain.Client.Stderr}");
            Assert.Equal(body, await File.ReadAllBytesAsync(Path.Combine(dir, "got.bin")));
            await chain.Client.WaitForStderrAsync("through the tls candidate");
            return;
        }
        Assert.NotEqual(0, exit);
        string reason = test switch
        {
            Case.UntrustedCa => "refused: no CA this system trusts issued it",
            Case.WrongName => "refused: it is not issued for the name",
            _ => "UTC (expired or not valid yet)",
        };
        await chain.Client.WaitForStderrAsync(reason); // the host itself is scrubbed from the log
        Assert.Contains("skipped", chain.Client.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("through the tls candidate", chain.Client.Stderr, StringComparison.Ordinal);
    }

    private static X509Certificate2 MakeCa(string name, ECDsa key, DateTimeOffset now)
    {
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(now.AddDays(-30), now.AddDays(30));
    }

    private static X509Certificate2 MakeLeaf(X509Certificate2 ca, ECDsa key, string dnsName, DateTimeOffset notBefore, DateTimeOffset notAfter)
    {
        var request = new CertificateRequest($"CN={dnsName}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(dnsName);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        byte[] serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using var issued = request.Create(ca, notBefore, notAfter, serial);
        return issued.CopyWithPrivateKey(key);
    }
}
