using System.Runtime.InteropServices;

namespace PtHost.Transports.Rud;

/// <summary>
/// AES-256-GCM through gnutls's AEAD API (libgnutls.so.30, present wherever PtHost's QUIC runs).
/// Same bytes as <see cref="System.Security.Cryptography.AesGcm"/>, at a fraction of its per-call
/// overhead: .NET's OpenSSL shim clears OpenSSL's thread error queue and re-sets the cipher for
/// every packet, which cost more than the encryption itself at RUD's packet rate. Not thread-safe;
/// a <see cref="PacketProtection"/> is used by one thread at a time (under its connection's lock).
/// </summary>
internal sealed unsafe partial class GnutlsAead : IDisposable
{
    private const string Lib = "libgnutls.so.30";
    private const int CipherAes256Gcm = 11;
    private nint _handle;

    [StructLayout(LayoutKind.Sequential)]
    private struct Datum { public byte* Data; public uint Size; }

    [LibraryImport(Lib, EntryPoint = "gnutls_aead_cipher_init")]
    private static partial int Init(nint* handle, int cipher, Datum* key);

    [LibraryImport(Lib, EntryPoint = "gnutls_aead_cipher_encrypt")]
    private static partial int Encrypt(nint handle, byte* nonce, nuint nonceLen, byte* auth, nuint authLen, nuint tagSize,
        byte* ptext, nuint ptextLen, byte* ctext, nuint* ctextLen);

    [LibraryImport(Lib, EntryPoint = "gnutls_aead_cipher_decrypt")]
    private static partial int Decrypt(nint handle, byte* nonce, nuint nonceLen, byte* auth, nuint authLen, nuint tagSize,
        byte* ctext, nuint ctextLen, byte* ptext, nuint* ptextLen);

    [LibraryImport(Lib, EntryPoint = "gnutls_aead_cipher_deinit")]
    private static partial void Deinit(nint handle);

    private GnutlsAead(nint handle) => _handle = handle;

    /// <summary>Whether gnutls can be loaded here (checked once, with a known-answer round trip).</summary>
    public static bool Available { get; } = Probe();

    private static bool Probe()
    {
        if (Environment.GetEnvironmentVariable("PTHOST_RUD_AEAD") == "openssl") return false;
        try
        {
            using var a = TryCreate(new byte[32]);
            if (a is null) return false;
            Span<byte> nonce = stackalloc byte[12];
            Span<byte> sealedBytes = stackalloc byte[4 + 16];
            Span<byte> back = stackalloc byte[4];
            a.Seal(nonce, "aad"u8, "data"u8, sealedBytes);
            // The same bytes as .NET's AesGcm, or this path is not used.
            using var reference = new System.Security.Cryptography.AesGcm(new byte[32], 16);
            Span<byte> expected = stackalloc byte[4 + 16];
            reference.Encrypt(nonce, "data"u8, expected[..4], expected[4..], "aad"u8);
            return sealedBytes.SequenceEqual(expected) && a.Open(nonce, "aad"u8, sealedBytes, back) && back.SequenceEqual("data"u8);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            return false;
        }
    }

    /// <summary>A cipher for this 32-byte key, or null when gnutls refuses it.</summary>
    public static GnutlsAead? TryCreate(ReadOnlySpan<byte> key)
    {
        fixed (byte* k = key)
        {
            var d = new Datum { Data = k, Size = (uint)key.Length };
            nint h;
            return Init(&h, CipherAes256Gcm, &d) < 0 ? null : new GnutlsAead(h);
        }
    }

    /// <summary>Ciphertext then 16-byte tag into <paramref name="output"/> (plaintext length + 16 bytes).</summary>
    public void Seal(ReadOnlySpan<byte> nonce, ReadOnlySpan<byte> aad, ReadOnlySpan<byte> plaintext, Span<byte> output)
    {
        if (output.Length < plaintext.Length + 16) throw new ArgumentException("output too small", nameof(output));
        fixed (byte* n = nonce)
        fixed (byte* a = aad)
        fixed (byte* p = plaintext)
        fixed (byte* o = output)
        {
            nuint len = (nuint)(plaintext.Length + 16);
            var rv = Encrypt(_handle, n, (nuint)nonce.Length, a, (nuint)aad.Length, 16, p, (nuint)plaintext.Length, o, &len);
            if (rv < 0) throw new System.Security.Cryptography.CryptographicException($"gnutls_aead_cipher_encrypt failed ({rv})");
        }
    }

    /// <summary>Ciphertext-then-tag to plaintext; false when it does not authenticate.</summary>
    public bool Open(ReadOnlySpan<byte> nonce, ReadOnlySpan<byte> aad, ReadOnlySpan<byte> sealedData, Span<byte> plaintext)
    {
        if (sealedData.Length < 16 || plaintext.Length < sealedData.Length - 16) return false;
        fixed (byte* n = nonce)
        fixed (byte* a = aad)
        fixed (byte* c = sealedData)
        fixed (byte* p = plaintext)
        {
            nuint len = (nuint)(sealedData.Length - 16);
            return Decrypt(_handle, n, (nuint)nonce.Length, a, (nuint)aad.Length, 16, c, (nuint)sealedData.Length, p, &len) >= 0;
        }
    }

    public void Dispose()
    {
        if (_handle != 0) Deinit(_handle);
        _handle = 0;
    }
}
