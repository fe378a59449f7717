using System.Formats.Asn1;
using System.Numerics;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace PtHost.Net.Tls;

/// <summary>
/// A client certificate derived from a seed (spec/rendezvous.md §3.3): the same seed gives the same
/// ECDSA P-256 key and the same certificate bytes, hence the same pin, in every process. So a bridge
/// line needs only the seed (the rendezvous secret) for a client to present a certificate the
/// server's <c>clientPins</c> admits, and the server computes that pin from the same seed.
/// The self-signature is deterministic ECDSA: the nonce is derived from the key and the hash
/// (HMAC-SHA256, in the spirit of RFC 6979; any valid nonce makes a valid signature).
/// </summary>
public static class DerivedCertificate
{
    private static readonly BigInteger N = BigInteger.Parse("0FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", System.Globalization.NumberStyles.HexNumber);
    private static readonly DateTimeOffset NotBefore = new(2000, 1, 1, 0, 0, 0, TimeSpan.Zero), NotAfter = new(2099, 12, 31, 0, 0, 0, TimeSpan.Zero);

    /// <summary>The certificate with its private key for <paramref name="keySeed"/> (48 bytes) and <paramref name="serialSeed"/> (8 bytes).</summary>
    public static X509Certificate2 Create(ReadOnlySpan<byte> keySeed, ReadOnlySpan<byte> serialSeed)
    {
        var d = Scalar(keySeed);
        using var key = ECDsa.Create(new ECParameters { Curve = ECCurve.NamedCurves.nistP256, D = Fixed32(d) });
        var request = new CertificateRequest("CN=pthost rendezvous client", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        byte[] serial = serialSeed[..8].ToArray();
        serial[0] &= 0x7F;
        serial[0] |= 0x40; // positive, eight bytes long
        using var unsigned = request.Create(new X500DistinguishedName("CN=pthost rendezvous client"), new Signer(key, d), NotBefore, NotAfter, serial);
        using var withKey = unsigned.CopyWithPrivateKey(key);
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>1..n-1 from uniform bytes (48 bytes keep the bias below 2^-128).</summary>
    private static BigInteger Scalar(ReadOnlySpan<byte> bytes) => BigInteger.Remainder(new BigInteger(bytes, isUnsigned: true, isBigEndian: true), N - 1) + 1;

    private static byte[] Fixed32(BigInteger v)
    {
        byte[] raw = v.ToByteArray(isUnsigned: true, isBigEndian: true);
        byte[] r = new byte[32];
        raw.CopyTo(r, 32 - raw.Length);
        return r;
    }

    private sealed class Signer(ECDsa key, BigInteger d) : X509SignatureGenerator
    {
        private readonly X509SignatureGenerator _inner = CreateForECDsa(key);

        public override byte[] GetSignatureAlgorithmIdentifier(HashAlgorithmName hashAlgorithm) => _inner.GetSignatureAlgorithmIdentifier(hashAlgorithm);

        protected override PublicKey BuildPublicKey() => _inner.PublicKey;

        public override byte[] SignData(byte[] data, HashAlgorithmName hashAlgorithm)
        {
            byte[] h = SHA256.HashData(data);
            var e = new BigInteger(h, isUnsigned: true, isBigEndian: true);
            byte[] dBytes = Fixed32(d);
            byte[] k1 = HMACSHA256.HashData(dBytes, h);
            byte[] k2 = HMACSHA256.HashData(dBytes, (byte[])[.. h, 1]);
            var k = Scalar([.. k1, .. k2]);
            using var nonceKey = ECDsa.Create(new ECParameters { Curve = ECCurve.NamedCurves.nistP256, D = Fixed32(k) });
            var rx = new BigInteger(nonceKey.ExportParameters(false).Q.X, isUnsigned: true, isBigEndian: true);
            var r = BigInteger.Remainder(rx, N);
            var kInv = BigInteger.ModPow(k, N - 2, N);
            var s = BigInteger.Remainder(kInv * (e + r * d), N);
            var w = new AsnWriter(AsnEncodingRules.DER);
            using (w.PushSequence())
            {
                w.WriteInteger(r);
                w.WriteInteger(s);
            }
            return w.Encode();
        }
    }
}
