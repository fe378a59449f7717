using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Rud;

internal static class RudOptionText
{
    public const string Path = "options.rud";

    /// <summary>A base64 X25519 key of 32 bytes.</summary>
    public static byte[]? Key(OptionsReader r, string key)
    {
        string? text = r.String(key);
        if (text is null) return null;
        byte[] k;
        try { k = Convert.FromBase64String(text); }
        catch (FormatException) { throw r.Fail(key, "is not base64"); }
        return k.Length == X25519.KeySize ? k : throw r.Fail(key, $"must be 32 bytes (base64), not {k.Length}");
    }

    /// <summary>A base64 X25519 public key of 32 bytes that is usable (not a low-order point); null when it is not.</summary>
    public static byte[]? UsablePublicKey(string text)
    {
        byte[] k;
        try { k = Convert.FromBase64String(text); }
        catch (FormatException) { return null; }
        if (k.Length != X25519.KeySize) return null;
        Span<byte> probe = stackalloc byte[X25519.KeySize];
        return X25519.Agree(X25519.GeneratePrivateKey(), k, probe) ? k : null;
    }

    /// <summary>The option's spelling of <paramref name="c"/>, for logs.</summary>
    public static string CongestionName(CongestionControl c) => c == CongestionControl.NewReno ? "newreno" : "bbr";

    /// <summary>The "congestion" option (§12): "bbr" (the default) or "newreno".</summary>
    public static CongestionControl Congestion(OptionsReader r) =>
        r.OneOf("congestion", "bbr", "newreno") == "newreno" ? CongestionControl.NewReno : CongestionControl.Bbr;
}

/// <summary>Client options (§12): the server's public key, optionally its address, the congestion control.</summary>
internal sealed record RudClientOptions(Destination? ServerAddress, byte[] ServerKey, TimeSpan HandshakeTimeout, CongestionControl Congestion = CongestionControl.Bbr, byte[]? ClientKey = null)
{
    public static RudClientOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, RudOptionText.Path);
        r.RejectUnknown("serverAddress", "serverKey", "handshakeTimeout", "congestion", "clientKey");
        var key = RudOptionText.Key(r.Require("serverKey", "pthost generate-config rud"), "serverKey")!;
        Span<byte> probe = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(X25519.GeneratePrivateKey(), key, probe))
            throw r.Fail("serverKey", "is not a usable X25519 public key (a low-order point)");
        return new(r.Destination("serverAddress"), key, r.Seconds("handshakeTimeout", TimeSpan.FromSeconds(10), 3600), RudOptionText.Congestion(r),
            RudOptionText.Key(r, "clientKey"));
    }
}

/// <summary>Server options (§12).</summary>
internal sealed record RudServerOptions(byte[]? Key, ChallengePolicy Challenge, bool FirstContact, CongestionControl Congestion = CongestionControl.Bbr,
    IReadOnlyList<byte[]>? AuthorizedKeys = null)
{
    public static RudServerOptions Parse(JToken? options)
    {
        var r = OptionsReader.For(options, RudOptionText.Path);
        r.RejectUnknown("key", "challenge", "firstContact", "congestion", "authorizedKeys");
        var challenge = r.OneOf("challenge", "load", "always", "never") switch
        {
            "always" => ChallengePolicy.Always,
            "never" => ChallengePolicy.Never,
            _ => ChallengePolicy.Load,
        };
        var authorized = r.List("authorizedKeys", RudOptionText.UsablePublicKey, "must be a usable X25519 public key of 32 bytes (base64)");
        return new(RudOptionText.Key(r, "key"), challenge, r.Bool("firstContact", false), RudOptionText.Congestion(r), authorized);
    }
}
