using System.Runtime.InteropServices;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Thrown when QUIC cannot run here: a library is missing, of the wrong version, or its
/// structs do not have the layouts Native/Layout.cs was written for.</summary>
public sealed class QuicUnavailableException(string message) : Exception(message);

/// <summary>Start-up check of the native libraries (run once, before any other QUIC call):
/// the three libraries load, ngtcp2 reports 0.12.1, gnutls is at least 3.7, and the structs
/// ngtcp2 fills in have the sizes and offsets we hard-code.</summary>
public static unsafe class QuicLibrary
{
    private static readonly Lazy<string?> Problem = new(() => Probe(Ngtcp2.Lib, Ngtcp2Crypto.Lib, GnuTls.Lib));

    /// <summary>Null when QUIC is usable, otherwise a one-line reason with the fix.</summary>
    public static string? UnavailableReason => Problem.Value;

    public static bool IsAvailable => Problem.Value is null;

    public static void EnsureAvailable()
    {
        if (Problem.Value is { } reason) throw new QuicUnavailableException(reason);
    }

    internal static nint CryptoLibrary { get; private set; }

    /// <summary>The check itself; the library names are parameters so a test can name a missing one.</summary>
    internal static string? Probe(string ngtcp2, string crypto, string gnutls)
    {
        const string Install = "install the Debian packages libngtcp2-9 libngtcp2-crypto-gnutls2 libgnutls30";
        foreach (var lib in new[] { ngtcp2, crypto, gnutls })
            if (!NativeLibrary.TryLoad(lib, out _))
                return $"QUIC unavailable: {lib} not found ({Install})";
        CryptoLibrary = NativeLibrary.Load(crypto);
        try
        {
            var info = (byte*)Ngtcp2.Version(0);
            if (info == null) return "QUIC unavailable: ngtcp2_version returned NULL";
            var num = *(int*)(info + Layout.Info.VersionNum);
            if (num != Layout.VersionNum)
                return $"QUIC unavailable: libngtcp2 version 0x{num:x6} found, this build needs exactly 0.12.1 (0x{Layout.VersionNum:x6}) because its struct layouts are version-specific";
            var req = "3.7.0\0"u8;
            fixed (byte* p = req)
                if (GnuTls.CheckVersion(p) == 0)
                    return "QUIC unavailable: libgnutls older than 3.7.0";
            if (CheckLayouts() is { } layout) return "QUIC unavailable: " + layout;
            foreach (var name in CryptoCallbackNames)
                if (!NativeLibrary.TryGetExport(CryptoLibrary, name, out _))
                    return $"QUIC unavailable: {crypto} lacks {name}";
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return "QUIC unavailable: " + e.Message;
        }
        return null;
    }

    internal static readonly string[] CryptoCallbackNames =
    [
        "ngtcp2_crypto_client_initial_cb", "ngtcp2_crypto_recv_client_initial_cb", "ngtcp2_crypto_recv_crypto_data_cb",
        "ngtcp2_crypto_encrypt_cb", "ngtcp2_crypto_decrypt_cb", "ngtcp2_crypto_hp_mask_cb", "ngtcp2_crypto_recv_retry_cb",
        "ngtcp2_crypto_update_key_cb", "ngtcp2_crypto_delete_crypto_aead_ctx_cb", "ngtcp2_crypto_delete_crypto_cipher_ctx_cb",
        "ngtcp2_crypto_get_path_challenge_data_cb", "ngtcp2_crypto_version_negotiation_cb",
    ];

    /// <summary>Let the library fill its default settings and transport parameters into buffers
    /// followed by guard bytes: nothing may be written past our sizes, and known defaults must
    /// appear at our offsets.</summary>
    private static string? CheckLayouts()
    {
        const int Guard = 256;
        var settings = stackalloc byte[Layout.Settings.Size + Guard];
        new Span<byte>(settings, Layout.Settings.Size + Guard).Fill(0xA5);
        Ngtcp2.SettingsDefault(Ngtcp2.StructVersion, settings);
        if (new Span<byte>(settings + Layout.Settings.Size, Guard).IndexOfAnyExcept((byte)0xA5) >= 0)
            return $"ngtcp2_settings is larger than {Layout.Settings.Size} bytes";
        if (*(ulong*)(settings + Layout.Settings.MaxTxUdpPayloadSize) != 1452 ||
            *(ulong*)(settings + Layout.Settings.HandshakeTimeout) != 10_000_000_000UL)
            return "ngtcp2_settings defaults are not where the 0.12.1 layout puts them";

        var tp = stackalloc byte[Layout.TransportParams.Size + Guard];
        new Span<byte>(tp, Layout.TransportParams.Size + Guard).Fill(0xA5);
        Ngtcp2.TransportParamsDefault(Ngtcp2.StructVersion, tp);
        if (new Span<byte>(tp + Layout.TransportParams.Size, Guard).IndexOfAnyExcept((byte)0xA5) >= 0)
            return $"ngtcp2_transport_params is larger than {Layout.TransportParams.Size} bytes";
        if (*(ulong*)(tp + Layout.TransportParams.MaxUdpPayloadSize) != 65527 ||
            *(ulong*)(tp + Layout.TransportParams.ActiveConnectionIdLimit) != 2 ||
            *(ulong*)(tp + Layout.TransportParams.AckDelayExponent) != 3 ||
            *(ulong*)(tp + Layout.TransportParams.MaxAckDelay) != 25_000_000UL ||
            *(ulong*)(tp + Layout.TransportParams.MaxDatagramFrameSize) != 0)
            return "ngtcp2_transport_params defaults are not where the 0.12.1 layout puts them";
        return null;
    }
}
