using System.Security.Cryptography;
using BenchmarkDotNet.Attributes;
using PtHost.Testing;
using PtHost.Transports.Rud;

namespace PtHost.MicroBenchmarks;

/// <summary>
/// Elligator 2 (spec/rud.md §4.6), the handshake's field arithmetic: the constant-time radix-2^51 code against the
/// BigInteger model it replaced (<see cref="Elligator2Reference"/>), in the same run. Encode is one attempt on a fixed
/// representable key (no X25519, no retry); GenerateKey is the whole key-pair step, OpenSSL's X25519 and retries included.
/// </summary>
public class Elligator2Benchmarks
{
    private readonly byte[] _representative = RandomNumberGenerator.GetBytes(32);
    private readonly byte[] _clean = new byte[32];
    private readonly byte[] _tweak = new byte[2];
    private readonly byte[] _private = new byte[32], _public = new byte[32], _out = new byte[32];

    [GlobalSetup]
    public void Setup()
    {
        // A clean key and tweak that have a representative, so Encode measures one successful encoding.
        while (true)
        {
            RandomNumberGenerator.Fill(_private);
            X25519.PublicKey(_private, _clean);
            RandomNumberGenerator.Fill(_tweak);
            if (Elligator2.TryRepresent(_clean, _tweak, _public, _out)) return;
        }
    }

    [Benchmark(Baseline = true)]
    public void Decode_BigInteger() => Elligator2Reference.Decode(_representative, _out);

    [Benchmark]
    public void Decode_Field25519() => Elligator2.Decode(_representative, _out);

    [Benchmark]
    public bool Encode_BigInteger() => Elligator2Reference.TryRepresent(_clean, _tweak, _public, _out);

    [Benchmark]
    public bool Encode_Field25519() => Elligator2.TryRepresent(_clean, _tweak, _public, _out);

    [Benchmark]
    public void GenerateKey_Field25519() => Elligator2.GenerateKey(_private, _public, _out);

    /// <summary>OpenSSL's X25519 public key: the part of GenerateKey the field code does not touch.</summary>
    [Benchmark]
    public void X25519_PublicKey() => X25519.PublicKey(_private, _out);
}
