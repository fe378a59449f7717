using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>The rud transport's options (spec/rud.md §12), checked once at start-up.</summary>
public class RudTransportOptionsTests
{
    private static string PublicKey()
    {
        var pub = new byte[32];
        X25519.PublicKey(X25519.GeneratePrivateKey(), pub);
        return Convert.ToBase64String(pub);
    }

    [Fact]
    public void A_client_needs_serverKey_and_takes_serverAddress_and_handshakeTimeout()
    {
        var o = RudClientOptions.Parse(new JObject { ["serverKey"] = PublicKey(), ["serverAddress"] = "example.org:443", ["handshakeTimeout"] = 2.5 });
        Assert.Equal("example.org", o.ServerAddress!.Host);
        Assert.Equal(TimeSpan.FromSeconds(2.5), o.HandshakeTimeout);
        Assert.Contains("serverKey", Assert.Throws<OptionsException>(() => RudClientOptions.Parse(new JObject())).Message);
        Assert.Contains("serverKey", Assert.Throws<OptionsException>(() => RudClientOptions.Parse(null)).Message);
    }

    [Theory]
    [InlineData("{\"serverKey\": \"not base64!\"}", "not base64")]
    [InlineData("{\"serverKey\": \"AAAA\"}", "32 bytes")]
    [InlineData("{\"serverKey\": \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"}", "low-order")]
    [InlineData("{\"serverKey\": 5}", "options.rud.serverKey: must be a string, not the number 5")]
    [InlineData("{\"serverKey\": \"KEY\", \"serverAddress\": \"nope\"}", "host:port")]
    [InlineData("{\"serverKey\": \"KEY\", \"handshakeTimeout\": 0}", "seconds")]
    [InlineData("{\"serverKey\": \"KEY\", \"colour\": \"red\"}", "options.rud.colour: unknown key")]
    public void Bad_client_options_are_refused_with_a_reason(string json, string reason)
    {
        var o = JObject.Parse(json.Replace("KEY", PublicKey(), StringComparison.Ordinal));
        Assert.Contains(reason, Assert.Throws<OptionsException>(() => RudClientOptions.Parse(o)).Message);
    }

    [Fact]
    public void Server_options_default_to_the_state_key_load_challenges_and_no_first_contact()
    {
        var o = RudServerOptions.Parse(null);
        Assert.Null(o.Key);
        Assert.Equal(ChallengePolicy.Load, o.Challenge);
        Assert.False(o.FirstContact);
        var all = RudServerOptions.Parse(new JObject { ["key"] = Convert.ToBase64String(X25519.GeneratePrivateKey()), ["challenge"] = "always", ["firstContact"] = true });
        Assert.Equal(ChallengePolicy.Always, all.Challenge);
        Assert.True(all.FirstContact);
        Assert.Throws<OptionsException>(() => RudServerOptions.Parse(new JObject { ["challenge"] = "sometimes" }));
        Assert.Throws<OptionsException>(() => RudServerOptions.Parse(new JObject { ["firstContact"] = "yes" }));
        Assert.Throws<OptionsException>(() => RudServerOptions.Parse(new JObject { ["keys"] = "x" }));
    }

    [Fact]
    public void Congestion_control_defaults_to_bbr_and_takes_newreno_on_either_side()
    {
        Assert.Equal(CongestionControl.Bbr, RudClientOptions.Parse(new JObject { ["serverKey"] = PublicKey() }).Congestion);
        Assert.Equal(CongestionControl.Bbr, RudServerOptions.Parse(null).Congestion);
        Assert.Equal(CongestionControl.Bbr, RudServerOptions.Parse(new JObject()).Congestion);
        Assert.Equal(CongestionControl.Bbr, RudClientOptions.Parse(new JObject { ["serverKey"] = PublicKey(), ["congestion"] = "bbr" }).Congestion);
        Assert.Equal(CongestionControl.NewReno, RudClientOptions.Parse(new JObject { ["serverKey"] = PublicKey(), ["congestion"] = "newreno" }).Congestion);
        Assert.Equal(CongestionControl.Bbr, RudServerOptions.Parse(new JObject { ["congestion"] = "bbr" }).Congestion);
        Assert.Equal(CongestionControl.NewReno, RudServerOptions.Parse(new JObject { ["congestion"] = "newreno" }).Congestion);
    }

    [Theory]
    [InlineData("{\"congestion\": \"cubic\"}", "must be \"bbr\" or \"newreno\", not \"cubic\"")]
    [InlineData("{\"congestion\": \"BBR\"}", "must be \"bbr\" or \"newreno\", not \"BBR\"")]
    [InlineData("{\"congestion\": \"\"}", "must be \"bbr\" or \"newreno\"")]
    [InlineData("{\"congestion\": 1}", "options.rud.congestion: must be \"bbr\" or \"newreno\", not the number 1")]
    [InlineData("{\"congestion\": null}", "options.rud.congestion: must be \"bbr\" or \"newreno\", not null")]
    [InlineData("{\"congestion\": [\"bbr\"]}", "options.rud.congestion: must be \"bbr\" or \"newreno\", not an array")]
    [InlineData("{\"congestoin\": \"bbr\"}", "known: key, challenge, firstContact, congestion, authorizedKeys")]
    public void Bad_congestion_options_are_refused_on_both_sides_naming_the_allowed_values(string json, string reason)
    {
        Assert.Contains(reason, Assert.Throws<OptionsException>(() => RudServerOptions.Parse(JObject.Parse(json))).Message);
        var client = JObject.Parse(json);
        client["serverKey"] = PublicKey();
        string clientReason = reason.Replace("key, challenge, firstContact, congestion, authorizedKeys", "serverAddress, serverKey, handshakeTimeout, congestion, clientKey", StringComparison.Ordinal);
        Assert.Contains(clientReason, Assert.Throws<OptionsException>(() => RudClientOptions.Parse(client)).Message);
    }

    [Fact]
    public void Generated_options_pair_the_servers_private_key_with_its_public_key()
    {
        var context = new TransportEnvironment("rud", null, Path.GetTempPath(), null!, null!, Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance, new TransportCounters());
        var generated = new RudTransport().CreateServerFactory(context).GenerateConfiguration();
        var priv = Convert.FromBase64String((string)generated.Server["key"]!);
        var pub = new byte[32];
        X25519.PublicKey(priv, pub);
        Assert.Equal(Convert.ToBase64String(pub), (string)generated.Client["serverKey"]!);
        // The client's key pair (spec/rud.md §5.5): its private key for the client, its public key authorized by the server.
        var clientPriv = Convert.FromBase64String((string)generated.Client["clientKey"]!);
        X25519.PublicKey(clientPriv, pub);
        Assert.Equal([Convert.ToBase64String(pub)], ((JArray)generated.Server["authorizedKeys"]!).Select(k => (string)k!));
        Assert.Equal(clientPriv, RudClientOptions.Parse(generated.Client).ClientKey);
        Assert.Equal(pub, Assert.Single(RudServerOptions.Parse(generated.Server).AuthorizedKeys!));
    }

    [Theory]
    [InlineData("{\"authorizedKeys\": \"x\"}", "options.rud.authorizedKeys: must be an array of strings")]
    [InlineData("{\"authorizedKeys\": [\"not base64!\"]}", "options.rud.authorizedKeys[0]: must be a usable X25519 public key of 32 bytes (base64)")]
    [InlineData("{\"authorizedKeys\": [\"AAAA\"]}", "options.rud.authorizedKeys[0]: must be a usable X25519 public key")]
    [InlineData("{\"authorizedKeys\": [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]}", "options.rud.authorizedKeys[0]: must be a usable X25519 public key")]
    public void Bad_authorized_keys_are_refused_naming_the_entry(string json, string reason) =>
        Assert.Contains(reason, Assert.Throws<OptionsException>(() => RudServerOptions.Parse(JObject.Parse(json))).Message);

    [Fact]
    public void A_bad_client_key_is_refused()
    {
        Assert.Contains("options.rud.clientKey: must be 32 bytes", Assert.Throws<OptionsException>(() => RudClientOptions.Parse(new JObject { ["serverKey"] = PublicKey(), ["clientKey"] = "AAAA" })).Message);
        Assert.Null(RudClientOptions.Parse(new JObject { ["serverKey"] = PublicKey() }).ClientKey);
    }
}

/// <summary>The server's key kept in its state directory (spec/rud.md §12).</summary>
public class RudServerStateKeyTests
{
    [Fact]
    public async Task A_server_without_a_key_option_creates_one_in_its_state_directory_mode_0600_and_reuses_it()
    {
        string state = Path.Combine(Path.GetTempPath(), $"pthost-rud-state-{Guid.NewGuid():N}");
        try
        {
            var context = new TransportEnvironment("rud", null, state, null!, null!, Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance, new TransportCounters());
            var binding = new ServerBinding(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0), null, null!);
            string first, second;
            await using (var server = await new RudTransport().CreateServerFactory(context).ListenAsync(binding, CancellationToken.None))
                first = server.Args["key"];
            await using (var server = await new RudTransport().CreateServerFactory(context).ListenAsync(binding, CancellationToken.None))
                second = server.Args["key"];
            Assert.Equal(first, second);
            string file = Path.Combine(state, RudServer.KeyFile);
            if (!OperatingSystem.IsWindows()) Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
            var pub = new byte[32];
            X25519.PublicKey(Convert.FromBase64String(File.ReadAllText(file)), pub);
            Assert.Equal(first, Convert.ToBase64String(pub));
        }
        finally { if (Directory.Exists(state)) Directory.Delete(state, true); }
    }
}
