using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Tls;
using PtHost.Transports.Zephyr;

namespace PtHost.Tests.Unit;

/// <summary>spec/zephyr.md §7.1 (options) and §7.4 (certificates, pins, TLS), without processes.</summary>
public class ZephyrTransportOptionsTests
{
    private static readonly Lazy<(JObject Client, JObject Server)> s_generated = new(() =>
    {
        var g = new ZephyrServer(null!, ZephyrServerOptions.Parse(null)).GenerateConfiguration();
        return (g.Client, g.Server);
    });

    private static JObject Client(Action<JObject>? edit = null)
    {
        var o = (JObject)s_generated.Value.Client.DeepClone();
        o["relay"] = "127.0.0.1:8888";
        edit?.Invoke(o);
        return o;
    }

    private static JObject Server(Action<JObject>? edit = null)
    {
        var o = (JObject)s_generated.Value.Server.DeepClone();
        edit?.Invoke(o);
        return o;
    }

    // ---- §7.1 options ----

    [Fact]
    public void Generated_client_options_with_a_relay_parse_with_the_default_timeouts()
    {
        var o = ZephyrClientOptions.Parse(Client());
        Assert.Equal(["127.0.0.1:8888"], o.Relays.Select(r => r.ToString()));
        Assert.Equal(TimeSpan.FromSeconds(20), o.SignalTimeout);
        Assert.Equal(TimeSpan.FromSeconds(10), o.TlsTimeout);
        Assert.True(o.Certificate.HasPrivateKey);
    }

    [Fact]
    public void Relays_keep_their_order()
    {
        var o = ZephyrClientOptions.Parse(Client(c => { c.Remove("relay"); c["relays"] = new JArray("b.example:1", "a.example:2"); }));
        Assert.Equal(["b.example:1", "a.example:2"], o.Relays.Select(r => r.ToString()));
    }

    [Fact]
    public void Timeouts_may_be_decimal_seconds()
    {
        var o = ZephyrClientOptions.Parse(Client(c => { c["signalTimeout"] = 2.5; c["tlsTimeout"] = 3; }));
        Assert.Equal(TimeSpan.FromSeconds(2.5), o.SignalTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), o.TlsTimeout);
    }

    public static TheoryData<string, string> BadClientEdits => new()
    {
        { "no-relay", "relay" }, { "relay-and-relays", "relays" }, { "empty-relays", "relays" }, { "relay-without-port", "relay" },
        { "no-pin", "serverPin" }, { "short-pin", "serverPin" }, { "non-hex-pin", "serverPin" }, { "no-certificate", "certificate" },
        { "key-without-certificate", "certificate" }, { "garbage-pem", "certificate" }, { "zero-timeout", "signalTimeout" },
        { "string-timeout", "tlsTimeout" }, { "unknown-key", "colour" },
    };

    [Theory]
    [MemberData(nameof(BadClientEdits))]
    public void Bad_client_options_fail_at_start_up_naming_the_key(string edit, string key)
    {
        var o = Client(c =>
        {
            switch (edit)
            {
                case "no-relay": c.Remove("relay"); break;
                case "relay-and-relays": c["relays"] = new JArray("127.0.0.1:1"); break;
                case "empty-relays": c.Remove("relay"); c["relays"] = new JArray(); break;
                case "relay-without-port": c["relay"] = "127.0.0.1"; break;
                case "no-pin": c.Remove("serverPin"); break;
                case "short-pin": c["serverPin"] = "abcd"; break;
                case "non-hex-pin": c["serverPin"] = new string('g', 64); break;
                case "no-certificate": c.Remove("certificate"); c.Remove("key"); break;
                case "key-without-certificate": c.Remove("certificate"); break;
                case "garbage-pem": c["certificate"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"; break;
                case "zero-timeout": c["signalTimeout"] = 0; break;
                case "string-timeout": c["tlsTimeout"] = "10"; break;
                case "unknown-key": c["colour"] = "blue"; break;
            }
        });
        Assert.Equal("options.zephyr." + key, Assert.Throws<OptionsException>(() => ZephyrClientOptions.Parse(o)).Path);
    }

    [Fact]
    public void Client_options_must_be_an_object()
    {
        Assert.Equal("options.zephyr", Assert.Throws<OptionsException>(() => ZephyrClientOptions.Parse(null)).Path);
        Assert.Equal("options.zephyr", Assert.Throws<OptionsException>(() => ZephyrClientOptions.Parse(new JArray())).Path);
    }

    [Fact]
    public void Generated_server_options_parse_and_pin_the_generated_client()
    {
        var o = ZephyrServerOptions.Parse(Server());
        Assert.NotNull(o.Certificate);
        var client = ZephyrClientOptions.Parse(Client());
        Assert.True(PinnedTls.Matches(client.Certificate, o.ClientPins));
        Assert.True(PinnedTls.Matches(o.Certificate, [client.ServerPin]));
    }

    [Fact]
    public void Pinned_tls_builds_the_peer_chain_against_no_store_and_trusts_the_pin_alone()
    {
        var server = ZephyrServerOptions.Parse(Server());
        var client = ZephyrClientOptions.Parse(Client());
        var c = PinnedTls.ClientOptions(client.Certificate, client.ServerPin);
        var s = PinnedTls.ServerOptions(server.Certificate!, server.ClientPins);
        foreach (var policy in new[] { c.CertificateChainPolicy, s.CertificateChainPolicy })
        {
            Assert.NotNull(policy);
            Assert.Equal(X509ChainTrustMode.CustomRootTrust, policy.TrustMode);
            Assert.Empty(policy.CustomTrustStore);
            Assert.Empty(policy.ExtraStore);
            Assert.True(policy.DisableCertificateDownloads);
            Assert.Equal(X509RevocationMode.NoCheck, policy.RevocationMode);
        }
        Assert.NotSame(c.CertificateChainPolicy, PinnedTls.ClientOptions(client.Certificate, client.ServerPin).CertificateChainPolicy);
        Assert.True(c.RemoteCertificateValidationCallback!(this, server.Certificate, null, SslPolicyErrors.RemoteCertificateChainErrors));
        Assert.False(s.RemoteCertificateValidationCallback!(this, server.Certificate, null, SslPolicyErrors.None));
    }

    [Fact]
    public void Server_options_may_be_absent_but_listening_then_needs_client_pins()
    {
        var o = ZephyrServerOptions.Parse(null);
        Assert.Empty(o.ClientPins);
        var server = new ZephyrServer(null!, o);
        Assert.Throws<TransportOptionsException>(() => server.ProxyAsync(new ServerBinding(new IPEndPoint(IPAddress.Loopback, 0), null, null!), default).AsTask().GetAwaiter().GetResult());
    }

    [Fact]
    public void A_server_without_relays_refuses_to_start_unless_anyRelay_is_true()
    {
        var none = new ZephyrServer(null!, ZephyrServerOptions.Parse(Server()));
        var e = Assert.Throws<TransportOptionsException>(() => none.ProxyAsync(new ServerBinding(new IPEndPoint(IPAddress.Loopback, 0), null, null!), default).AsTask().GetAwaiter().GetResult());
        Assert.Contains("\"relays\"", e.Message, StringComparison.Ordinal);
        Assert.Contains("anyRelay", e.Message, StringComparison.Ordinal);

        Assert.True(ZephyrServerOptions.Parse(Server(s => s["anyRelay"] = true)).AnyRelay);
        Assert.False(ZephyrServerOptions.Parse(Server(s => s["anyRelay"] = false)).AnyRelay);
        var listed = ZephyrServerOptions.Parse(Server(s => s["relays"] = new JArray("127.0.0.1:8888", "relay.example:443")));
        Assert.False(listed.AnyRelay);
        Assert.Equal(2, listed.Relays!.Count);
    }

    // ---- §8.6 direct joins: relayInstances ----

    [Fact]
    public void RelayInstances_maps_a_listed_relay_to_instance_addresses_which_count_as_allowed()
    {
        var o = ZephyrServerOptions.Parse(Server(s =>
        {
            s["relay"] = "Balancer.example:7000";
            s["relayInstances"] = JObject.Parse("""{"balancer.example:7000": {"1": "10.0.0.1:8888", "15": "10.0.0.15:8888"}}""");
        }));
        var balancer = Destination.Parse("balancer.example:7000");
        Assert.Equal("10.0.0.1:8888", o.RelayInstances!.Direct(balancer, 1)!.ToString());
        Assert.Equal("10.0.0.15:8888", o.RelayInstances.Direct(balancer, 15)!.ToString());
        Assert.Null(o.RelayInstances.Direct(balancer, 2));
        Assert.Null(o.RelayInstances.Direct(balancer, 0));
        Assert.Null(o.RelayInstances.Direct(Destination.Parse("other.example:7000"), 1));
        Assert.True(o.RelayInstances.Lists(Destination.Parse("10.0.0.1:8888")));
        Assert.False(o.RelayInstances.Lists(Destination.Parse("10.0.0.2:8888")));
        Assert.Null(ZephyrServerOptions.Parse(Server(s => s["relay"] = "127.0.0.1:1")).RelayInstances);
    }

    [Theory]
    [InlineData("""{"127.0.0.1:7000": {"0": "10.0.0.1:1"}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"].0")]
    [InlineData("""{"127.0.0.1:7000": {"16": "10.0.0.1:1"}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"].16")]
    [InlineData("""{"127.0.0.1:7000": {"01": "10.0.0.1:1"}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"].01")]
    [InlineData("""{"127.0.0.1:7000": {"one": "10.0.0.1:1"}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"].one")]
    [InlineData("""{"127.0.0.1:7000": {"1": "10.0.0.1"}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"].1")]
    [InlineData("""{"127.0.0.1:7000": {"1": 8888}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"].1")]
    [InlineData("""{"127.0.0.1:7000": {}}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"]")]
    [InlineData("""{"127.0.0.1:7000": ["10.0.0.1:1"]}""", "options.zephyr.relayInstances[\"127.0.0.1:7000\"]")]
    [InlineData("""{"127.0.0.1:7001": {"1": "10.0.0.1:1"}}""", "options.zephyr.relayInstances[\"127.0.0.1:7001\"]")]
    [InlineData("""{"nonsense": {"1": "10.0.0.1:1"}}""", "options.zephyr.relayInstances.nonsense")]
    [InlineData("""["127.0.0.1:7000"]""", "options.zephyr.relayInstances")]
    public void A_bad_relayInstances_map_fails_naming_the_key(string json, string path)
    {
        var e = Assert.Throws<OptionsException>(() => ZephyrServerOptions.Parse(Server(s =>
        {
            s["relay"] = "127.0.0.1:7000";
            s["relayInstances"] = JToken.Parse(json);
        })));
        Assert.Equal(path, e.Path);
    }

    [Fact]
    public void RelayInstances_with_anyRelay_may_name_any_balancer() =>
        Assert.NotNull(ZephyrServerOptions.Parse(Server(s =>
        {
            s["anyRelay"] = true;
            s["relayInstances"] = JObject.Parse("""{"lb.example:7000": {"1": "10.0.0.1:8888"}}""");
        })).RelayInstances!.Direct(Destination.Parse("lb.example:7000"), 1));

    [Theory]
    [InlineData("anyRelay", "\"yes\"")]
    [InlineData("anyRelay", "1")]
    public void AnyRelay_must_be_a_boolean(string key, string json) =>
        Assert.Equal("options.zephyr." + key, Assert.Throws<OptionsException>(() => ZephyrServerOptions.Parse(Server(s => s[key] = JToken.Parse(json)))).Path);

    [Fact]
    public void AnyRelay_true_excludes_a_relay_list() =>
        Assert.Throws<OptionsException>(() => ZephyrServerOptions.Parse(Server(s =>
        {
            s["anyRelay"] = true;
            s["relay"] = "127.0.0.1:8888";
        })));

    [Theory]
    [InlineData("clientPins", "\"abc\"")]
    [InlineData("clientPins", "[\"abc\"]")]
    [InlineData("clientPins", "[5]")]
    [InlineData("pkcs12", "\"not base64!\"")]
    [InlineData("relays", "[]")]
    [InlineData("listen", "\"0.0.0.0:1\"")]
    public void Bad_server_options_fail_at_start_up(string key, string json)
    {
        var o = Server(s => s[key] = JToken.Parse(json));
        Assert.StartsWith("options.zephyr." + key, Assert.Throws<OptionsException>(() => ZephyrServerOptions.Parse(o)).Path, StringComparison.Ordinal);
    }

    [Fact]
    public void A_certificate_may_come_as_base64_PKCS12()
    {
        using var cert = PinnedTls.Generate("t");
        var o = ZephyrServerOptions.Parse(new JObject
        {
            ["pkcs12"] = Convert.ToBase64String(cert.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12)),
            ["clientPins"] = new JArray(new string('0', 64)),
        });
        Assert.Equal(PinnedTls.Pin(cert), PinnedTls.Pin(o.Certificate!));
        Assert.True(o.Certificate!.HasPrivateKey);
    }

    [Fact]
    public async Task Without_a_certificate_option_the_server_creates_one_in_its_state_directory_once()
    {
        string state = Path.Combine(Path.GetTempPath(), $"pthost-zephyr-state-{Guid.NewGuid():N}");
        try
        {
            var options = new JObject { ["clientPins"] = new JArray(new string('a', 64)), ["anyRelay"] = true };
            string first = await StartAndReadPinAsync(state, options);
            Assert.True(File.Exists(Path.Combine(state, PinnedTls.CertificateFile)));
            if (!OperatingSystem.IsWindows())
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(state, PinnedTls.KeyFile)));
            Assert.Equal(first, await StartAndReadPinAsync(state, options));
        }
        finally { Directory.Delete(state, true); }
    }

    private static async Task<string> StartAndReadPinAsync(string state, JObject options)
    {
        var loggers = Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance;
        var context = new TransportEnvironment("zephyr", options, state, new SilentSignals(), new PtHost.Net.DirectDialer(), loggers, new TransportCounters());
        await using var factory = new ZephyrTransport().CreateServerFactory(context);
        await using var manager = await factory.ProxyAsync(new ServerBinding(new IPEndPoint(IPAddress.Loopback, 0), null, null!), default);
        return manager.Args["pin"];
    }

    private sealed class SilentSignals : ISignalChannel
    {
        private readonly System.Threading.Channels.Channel<Signal> _incoming = System.Threading.Channels.Channel.CreateUnbounded<Signal>();
        public string InstanceId => "0000000000000001";
        public long Send(Signal signal) => 1;
        public System.Threading.Channels.ChannelReader<Signal> Incoming => _incoming.Reader;
    }

    // ---- §7.4 certificates and pins ----

    [Fact]
    public void Generated_certificates_are_self_signed_ECDSA_P256()
    {
        using var cert = PinnedTls.Generate("t");
        using var key = cert.GetECDsaPrivateKey();
        Assert.NotNull(key);
        Assert.Equal(256, key!.KeySize);
        Assert.Equal(cert.Subject, cert.Issuer);
    }

    [Fact]
    public void A_pin_is_the_SHA256_of_the_DER_certificate_in_64_hex_digits()
    {
        using var cert = PinnedTls.Generate("t");
        string pin = PinnedTls.FormatPin(PinnedTls.Pin(cert));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(cert.RawData)), pin);
        Assert.Equal(64, pin.Length);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Pins_parse_in_either_case_and_with_colons(bool upper, bool colons)
    {
        byte[] raw = RandomNumberGenerator.GetBytes(32);
        string text = upper ? Convert.ToHexString(raw) : Convert.ToHexStringLower(raw);
        if (colons) text = string.Join(":", Enumerable.Range(0, 32).Select(i => text.Substring(i * 2, 2)));
        Assert.Equal(raw, PinnedTls.ParsePin(text));
    }

    [Theory]
    [InlineData("")]
    [InlineData("00")]
    [InlineData("zz00000000000000000000000000000000000000000000000000000000000000")]
    [InlineData("000000000000000000000000000000000000000000000000000000000000000000")]
    public void Malformed_pins_are_refused(string text) => Assert.Null(PinnedTls.ParsePin(text));

    [Fact]
    public void Only_a_listed_pin_matches_and_no_certificate_never_matches()
    {
        using var a = PinnedTls.Generate("a");
        using var b = PinnedTls.Generate("b");
        Assert.True(PinnedTls.Matches(a, [PinnedTls.Pin(b), PinnedTls.Pin(a)]));
        Assert.False(PinnedTls.Matches(a, [PinnedTls.Pin(b)]));
        Assert.False(PinnedTls.Matches(a, []));
        Assert.False(PinnedTls.Matches(null, [PinnedTls.Pin(a)]));
    }

    // ---- §7.4 TLS 1.3, mutually authenticated ----

    [Fact]
    public async Task The_generated_pair_completes_mutual_TLS_1_3()
    {
        var client = ZephyrClientOptions.Parse(Client());
        var server = ZephyrServerOptions.Parse(Server());
        var (c, s) = await HandshakeAsync(PinnedTls.ClientOptions(client.Certificate, client.ServerPin), PinnedTls.ServerOptions(server.Certificate!, server.ClientPins));
        Assert.Null(c);
        Assert.Null(s);
    }

    [Fact]
    public async Task A_server_certificate_with_another_pin_is_refused_by_the_client()
    {
        var client = ZephyrClientOptions.Parse(Client());
        var server = ZephyrServerOptions.Parse(Server());
        var (c, _) = await HandshakeAsync(PinnedTls.ClientOptions(client.Certificate, RandomNumberGenerator.GetBytes(32)), PinnedTls.ServerOptions(server.Certificate!, server.ClientPins));
        Assert.IsType<AuthenticationException>(c);
    }

    [Fact]
    public async Task A_client_certificate_with_another_pin_is_refused_by_the_server()
    {
        var client = ZephyrClientOptions.Parse(Client());
        var server = ZephyrServerOptions.Parse(Server());
        var (_, s) = await HandshakeAsync(PinnedTls.ClientOptions(client.Certificate, client.ServerPin), PinnedTls.ServerOptions(server.Certificate!, [RandomNumberGenerator.GetBytes(32)]));
        Assert.IsType<AuthenticationException>(s);
    }

    /// <summary>Runs both handshakes over a loopback socket pair; returns each side's exception (null: success).</summary>
    private static async Task<(Exception? Client, Exception? Server)> HandshakeAsync(SslClientAuthenticationOptions client, SslServerAuthenticationOptions server)
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        using var a = new TcpClient();
        await a.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
        using var b = await listener.AcceptTcpClientAsync();
        await using var ca = new SslStream(a.GetStream());
        await using var sb = new SslStream(b.GetStream());
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var ct = Capture(async () =>
        {
            try
            {
                await ca.AuthenticateAsClientAsync(client, cts.Token);
                Assert.Equal(SslProtocols.Tls13, ca.SslProtocol);
                // TLS 1.3 servers check the client certificate after the client's handshake ends: wait for the verdict.
                await ca.WriteAsync(new byte[] { 1 }, cts.Token);
                if (await ca.ReadAsync(new byte[1], cts.Token) != 1) throw new AuthenticationException("server closed");
            }
            catch
            {
                a.Close();
                throw;
            }
        });
        var st = Capture(async () =>
        {
            try
            {
                await sb.AuthenticateAsServerAsync(server, cts.Token);
                Assert.NotNull(sb.RemoteCertificate);
                var one = new byte[1];
                await sb.ReadExactlyAsync(one, cts.Token);
                await sb.WriteAsync(one, cts.Token);
            }
            finally { if (!sb.IsMutuallyAuthenticated) b.Close(); }
        });
        return (await ct, await st);
    }

    private static async Task<Exception?> Capture(Func<Task> f)
    {
        try { await f(); return null; }
        catch (Exception e) { return e is IOException && e.InnerException is AuthenticationException ae ? ae : e; }
    }
}
