using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using X86Aes = System.Runtime.Intrinsics.X86.Aes;

namespace PtHost.Transports.Rud;

/// <summary>
/// AES-256 of one 16-byte block with the processor's AES instructions (AES-NI): the key schedule of
/// FIPS 197 §5.2 through AESKEYGENASSIST, then 14 rounds. The header mask of every Data packet
/// (spec/rud.md §3.3) is one such block each way; through .NET's OpenSSL shim each cost a native
/// call that also clears OpenSSL's error queue, and a lock around the shared transform. Immutable
/// after construction, so any thread may use it at once. Only where <see cref="IsSupported"/>;
/// <see cref="HeaderProtection"/> keeps the OpenSSL transform elsewhere.
/// </summary>
internal sealed class Aes256Block
{
    private const int Rounds = 14;
    private readonly Vector128<byte>[] _keys = new Vector128<byte>[Rounds + 1];

    public static bool IsSupported => X86Aes.IsSupported && Sse2.IsSupported;

    public Aes256Block(ReadOnlySpan<byte> key)
    {
        if (!IsSupported) throw new PlatformNotSupportedException("AES-NI is not available");
        if (key.Length != 32) throw new ArgumentException("AES-256 takes a 32-byte key", nameof(key));
        var k = _keys;
        var t1 = Vector128.Create(key[..16]);
        var t3 = Vector128.Create(key[16..]);
        k[0] = t1;
        k[1] = t3;
        // Each step: the next even round key from the previous two (with the round constant), the odd one after it.
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x01)); k[2] = t1; t3 = Odd(t1, t3); k[3] = t3;
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x02)); k[4] = t1; t3 = Odd(t1, t3); k[5] = t3;
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x04)); k[6] = t1; t3 = Odd(t1, t3); k[7] = t3;
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x08)); k[8] = t1; t3 = Odd(t1, t3); k[9] = t3;
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x10)); k[10] = t1; t3 = Odd(t1, t3); k[11] = t3;
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x20)); k[12] = t1; t3 = Odd(t1, t3); k[13] = t3;
        t1 = Even(t1, X86Aes.KeygenAssist(t3, 0x40)); k[14] = t1;
    }

    /// <summary>w[i] = w[i−8] ⊕ SubWord(RotWord(w[i−1])) ⊕ Rcon, and the three words after it (FIPS 197 §5.2).</summary>
    private static Vector128<byte> Even(Vector128<byte> previous, Vector128<byte> assist)
    {
        var t2 = Sse2.Shuffle(assist.AsInt32(), 0xff).AsByte();
        return Spread(previous) ^ t2;
    }

    /// <summary>The odd round key of AES-256: SubWord (no rotation, no constant) of the last word of the even one.</summary>
    private static Vector128<byte> Odd(Vector128<byte> even, Vector128<byte> previous)
    {
        var t2 = Sse2.Shuffle(X86Aes.KeygenAssist(even, 0x00).AsInt32(), 0xaa).AsByte();
        return Spread(previous) ^ t2;
    }

    /// <summary>Each word XORed with all the words before it (the running XOR of the key schedule).</summary>
    private static Vector128<byte> Spread(Vector128<byte> v)
    {
        var t = Sse2.ShiftLeftLogical128BitLane(v, 4);
        v ^= t;
        t = Sse2.ShiftLeftLogical128BitLane(t, 4);
        v ^= t;
        t = Sse2.ShiftLeftLogical128BitLane(t, 4);
        return v ^ t;
    }

    /// <summary>Encrypts the 16 bytes of <paramref name="input"/> into <paramref name="output"/> (they may overlap).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Encrypt(ReadOnlySpan<byte> input, Span<byte> output)
    {
        var k = _keys;
        var x = Vector128.Create(input[..16]) ^ k[0];
        for (int i = 1; i < Rounds; i++) x = X86Aes.Encrypt(x, k[i]);
        x = X86Aes.EncryptLast(x, k[Rounds]);
        x.CopyTo(output);
    }
}
