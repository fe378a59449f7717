using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>
/// X25519 (RFC 7748) through the system OpenSSL's EVP_PKEY API (spec/rud.md §5.1): .NET has no
/// X25519. Used only by handshakes, so each call makes and frees its own EVP_PKEY objects.
/// </summary>
public static partial class X25519
{
    public const int KeySize = 32;
    private const int NidX25519 = 1034;
    private const string Lib = "libcrypto.so.3";

    /// <summary>A fresh private key: 32 bytes from the system RNG (OpenSSL clamps it).</summary>
    public static byte[] GeneratePrivateKey() => RandomNumberGenerator.GetBytes(KeySize);

    /// <summary>The public key of <paramref name="privateKey"/>.</summary>
    public static unsafe void PublicKey(ReadOnlySpan<byte> privateKey, Span<byte> publicKey)
    {
        if (privateKey.Length != KeySize || publicKey.Length != KeySize) throw new ArgumentException("X25519 keys are 32 bytes");
        nint key;
        fixed (byte* p = privateKey) key = EVP_PKEY_new_raw_private_key(NidX25519, 0, p, KeySize);
        if (key == 0) throw new CryptographicException("EVP_PKEY_new_raw_private_key failed");
        try
        {
            nuint length = KeySize;
            fixed (byte* o = publicKey)
                if (EVP_PKEY_get_raw_public_key(key, o, &length) != 1 || length != KeySize) throw new CryptographicException("EVP_PKEY_get_raw_public_key failed");
        }
        finally { EVP_PKEY_free(key); }
    }

    /// <summary>
    /// X25519(private, peer public) into <paramref name="shared"/>. Returns false for an unusable
    /// peer key, including one that gives the all-zero secret (a low-order point, §5.1).
    /// </summary>
    public static unsafe bool Agree(ReadOnlySpan<byte> privateKey, ReadOnlySpan<byte> peerPublicKey, Span<byte> shared)
    {
        if (privateKey.Length != KeySize || peerPublicKey.Length != KeySize || shared.Length != KeySize) return false;
        nint key = 0, peer = 0, ctx = 0;
        try
        {
            fixed (byte* p = privateKey) key = EVP_PKEY_new_raw_private_key(NidX25519, 0, p, KeySize);
            fixed (byte* p = peerPublicKey) peer = EVP_PKEY_new_raw_public_key(NidX25519, 0, p, KeySize);
            if (key == 0 || peer == 0) return false;
            ctx = EVP_PKEY_CTX_new(key, 0);
            if (ctx == 0 || EVP_PKEY_derive_init(ctx) != 1 || EVP_PKEY_derive_set_peer(ctx, peer) != 1) return false;
            nuint length = KeySize;
            fixed (byte* o = shared)
                if (EVP_PKEY_derive(ctx, o, &length) != 1 || length != KeySize) return false;
            return shared.IndexOfAnyExcept((byte)0) >= 0;
        }
        finally
        {
            if (ctx != 0) EVP_PKEY_CTX_free(ctx);
            if (peer != 0) EVP_PKEY_free(peer);
            if (key != 0) EVP_PKEY_free(key);
            ERR_clear_error();
        }
    }

    [LibraryImport(Lib)] private static unsafe partial nint EVP_PKEY_new_raw_private_key(int type, nint engine, byte* key, nuint length);
    [LibraryImport(Lib)] private static unsafe partial nint EVP_PKEY_new_raw_public_key(int type, nint engine, byte* key, nuint length);
    [LibraryImport(Lib)] private static unsafe partial int EVP_PKEY_get_raw_public_key(nint key, byte* output, nuint* length);
    [LibraryImport(Lib)] private static partial nint EVP_PKEY_CTX_new(nint key, nint engine);
    [LibraryImport(Lib)] private static partial int EVP_PKEY_derive_init(nint ctx);
    [LibraryImport(Lib)] private static partial int EVP_PKEY_derive_set_peer(nint ctx, nint peer);
    [LibraryImport(Lib)] private static unsafe partial int EVP_PKEY_derive(nint ctx, byte* output, nuint* length);
    [LibraryImport(Lib)] private static partial void EVP_PKEY_CTX_free(nint ctx);
    [LibraryImport(Lib)] private static partial void EVP_PKEY_free(nint key);
    [LibraryImport(Lib)] private static partial void ERR_clear_error();
}
