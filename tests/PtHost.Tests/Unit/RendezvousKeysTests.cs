using Newtonsoft.Json.Linq;
using PtHost.Hosting;
using PtHost.Net.Signals;
using PtHost.Net.Tls;

namespace PtHost.Tests.Unit;

/// <summary>spec/rendezvous.md §3–§4 and §7.3–§7.4: keys, sealing, the derived certificate, bridge-line options.</summary>
public class RendezvousKeysTests
{
    private const string Secret = "n6G4ZgWPVrBdW_7V9iskzg";

    [Fact]
    public void The_channel_is_the_hash_of_the_token_and_the_relay_accepts_only_that_token()
    {
        var keys = RendezvousKeys.Parse(Secret);
        Assert.Equal(22, keys.Channel.Length);
        Assert.Equal(keys.Channel, RendezvousKeys.ChannelOf(keys.Token));
        Assert.True(PtHost.Rendezvous.RendezvousRelay.TokenOpens(keys.TokenText, keys.Channel));
        var other = RendezvousKeys.Parse(RendezvousKeys.NewSecret());
        Assert.False(PtHost.Rendezvous.RendezvousRelay.TokenOpens(other.TokenText, keys.Channel));
        Assert.False(PtHost.Rendezvous.RendezvousRelay.TokenOpens("short", keys.Channel));
        // The same secret always gives the same channel (both processes and every restart agree).
        Assert.Equal(keys.Channel, RendezvousKeys.Parse(Secret).Channel);
    }

    [Theory]
    [InlineData("AAAA")]
    [InlineData("not base64 at all!")]
    public void Short_or_malformed_secrets_are_refused(string secret) => Assert.Throws<FormatException>(() => RendezvousKeys.Parse(secret));

    [Fact]
    public void A_sealed_message_opens_only_for_its_mailbox_and_only_unaltered()
    {
        var keys = RendezvousKeys.Parse(Secret);
        byte[] sealedMessage = keys.Seal("c/0123456789abcdef", "zephyr", "{\"v\":1}");
        Assert.Equal(RendezvousKeys.Overhead + 1 + 6 + 7, sealedMessage.Length);
        Assert.Equal(("zephyr", "{\"v\":1}"), keys.Open("c/0123456789abcdef", sealedMessage, out _));
        Assert.Null(keys.Open("c/fedcba9876543210", sealedMessage, out string? why));
        Assert.Contains("authentication failed", why, StringComparison.Ordinal);
        Assert.Null(keys.Open("s", sealedMessage, out _));
        Assert.Null(RendezvousKeys.Parse(RendezvousKeys.NewSecret()).Open("c/0123456789abcdef", sealedMessage, out _));
        sealedMessage[20] ^= 0x01;
        Assert.Null(keys.Open("c/0123456789abcdef", sealedMessage, out _));
    }

    [Fact]
    public void The_derived_client_certificate_is_the_same_bytes_every_time_and_valid()
    {
        var keys = RendezvousKeys.Parse(Secret);
        using var a = BridgeLine.ClientCertificate(keys);
        using var b = BridgeLine.ClientCertificate(RendezvousKeys.Parse(Secret));
        Assert.Equal(a.RawData, b.RawData);
        Assert.True(a.HasPrivateKey);
        // The deterministic signature is a real ECDSA signature over the TBS: the certificate verifies itself.
        using var chain = new System.Security.Cryptography.X509Certificates.X509Chain();
        chain.ChainPolicy.RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck;
        chain.ChainPolicy.TrustMode = System.Security.Cryptography.X509Certificates.X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(a);
        Assert.True(chain.Build(a), string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation)));
        using var other = BridgeLine.ClientCertificate(RendezvousKeys.Parse(RendezvousKeys.NewSecret()));
        Assert.NotEqual(PinnedTls.Pin(a), PinnedTls.Pin(other));
    }

    [Fact]
    public void Bridge_line_arguments_become_client_options_with_the_derived_certificate()
    {
        var endpoint = RendezvousEndpoint.Parse("http://127.0.0.1:7520", Secret, null);
        var args = new JObject { ["rendezvous"] = "http://127.0.0.1:7520", ["secret"] = Secret, ["pin"] = new string('a', 64), ["relay"] = "127.0.0.1:7600", ["destination"] = "127.0.0.1:80" };
        var o = BridgeLine.ClientOptions(args, endpoint);
        Assert.Equal(new[] { "serverPin", "relay", "certificate", "key" }, o.Properties().Select(p => p.Name));
        using var cert = BridgeLine.ClientCertificate(endpoint.Keys);
        Assert.Equal(cert.ExportCertificatePem(), (string)o["certificate"]!);
        // The server side admits that certificate's pin, next to any it had.
        var server = (JObject)BridgeLine.ServerOptions("zephyr", new JObject { ["clientPins"] = new JArray(new string('b', 64)) }, endpoint)!;
        Assert.Equal(new[] { new string('b', 64), PinnedTls.FormatPin(PinnedTls.Pin(cert)) }, ((JArray)server["clientPins"]!).Select(t => (string)t!));
        Assert.Null(BridgeLine.ServerOptions("asport", null, endpoint));
        var smethod = BridgeLine.ServerArgs("zephyr", new Dictionary<string, string> { ["pin"] = "p" }, new JObject { ["relay"] = "127.0.0.1:7600" }, endpoint);
        Assert.Equal(["pin", "rendezvous", "secret", "relay"], smethod.Keys);
    }
}
