using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>The ngtcp2_callbacks tables. Crypto callbacks point straight into
/// libngtcp2_crypto_gnutls; the rest are [UnmanagedCallersOnly] methods here. An exception
/// escaping one would kill the process, so each catches and returns NGTCP2_ERR_CALLBACK_FAILURE.</summary>
internal static unsafe class Callbacks
{
    private static byte* _client, _server;

    public static byte* Client => _client != null ? _client : (_client = Build(server: false));
    public static byte* Server => _server != null ? _server : (_server = Build(server: true));

    private static byte* Build(bool server)
    {
        var t = (byte*)NativeMemory.AllocZeroed(Layout.Callbacks.Size);
        var lib = QuicLibrary.CryptoLibrary;
        void Crypto(int offset, string name) => *(nint*)(t + offset) = NativeLibrary.GetExport(lib, name);
        if (server) Crypto(Layout.Callbacks.RecvClientInitial, "ngtcp2_crypto_recv_client_initial_cb");
        else
        {
            Crypto(Layout.Callbacks.ClientInitial, "ngtcp2_crypto_client_initial_cb");
            Crypto(Layout.Callbacks.RecvRetry, "ngtcp2_crypto_recv_retry_cb");
        }
        Crypto(Layout.Callbacks.RecvCryptoData, "ngtcp2_crypto_recv_crypto_data_cb");
        Crypto(Layout.Callbacks.Encrypt, "ngtcp2_crypto_encrypt_cb");
        Crypto(Layout.Callbacks.Decrypt, "ngtcp2_crypto_decrypt_cb");
        Crypto(Layout.Callbacks.HpMask, "ngtcp2_crypto_hp_mask_cb");
        Crypto(Layout.Callbacks.UpdateKey, "ngtcp2_crypto_update_key_cb");
        Crypto(Layout.Callbacks.DeleteCryptoAeadCtx, "ngtcp2_crypto_delete_crypto_aead_ctx_cb");
        Crypto(Layout.Callbacks.DeleteCryptoCipherCtx, "ngtcp2_crypto_delete_crypto_cipher_ctx_cb");
        Crypto(Layout.Callbacks.GetPathChallengeData, "ngtcp2_crypto_get_path_challenge_data_cb");
        Crypto(Layout.Callbacks.VersionNegotiation, "ngtcp2_crypto_version_negotiation_cb");

        *(nint*)(t + Layout.Callbacks.HandshakeCompleted) = (nint)(delegate* unmanaged<nint, nint, int>)&HandshakeCompleted;
        *(nint*)(t + Layout.Callbacks.RecvStreamData) = (nint)(delegate* unmanaged<nint, uint, long, ulong, byte*, nuint, nint, nint, int>)&RecvStreamData;
        *(nint*)(t + Layout.Callbacks.AckedStreamDataOffset) = (nint)(delegate* unmanaged<nint, long, ulong, ulong, nint, nint, int>)&AckedStreamDataOffset;
        *(nint*)(t + Layout.Callbacks.StreamOpen) = (nint)(delegate* unmanaged<nint, long, nint, int>)&StreamOpen;
        *(nint*)(t + Layout.Callbacks.StreamClose) = (nint)(delegate* unmanaged<nint, uint, long, ulong, nint, nint, int>)&StreamClose;
        *(nint*)(t + Layout.Callbacks.StreamReset) = (nint)(delegate* unmanaged<nint, long, ulong, ulong, nint, nint, int>)&StreamReset;
        *(nint*)(t + Layout.Callbacks.StreamStopSending) = (nint)(delegate* unmanaged<nint, long, ulong, nint, nint, int>)&StreamStopSending;
        *(nint*)(t + Layout.Callbacks.ExtendMaxLocalStreamsBidi) = (nint)(delegate* unmanaged<nint, ulong, nint, int>)&ExtendMaxLocalStreams;
        *(nint*)(t + Layout.Callbacks.ExtendMaxLocalStreamsUni) = (nint)(delegate* unmanaged<nint, ulong, nint, int>)&ExtendMaxLocalStreams;
        *(nint*)(t + Layout.Callbacks.ExtendMaxStreamData) = (nint)(delegate* unmanaged<nint, long, ulong, nint, nint, int>)&ExtendMaxStreamData;
        *(nint*)(t + Layout.Callbacks.Rand) = (nint)(delegate* unmanaged<byte*, nuint, nint, void>)&Rand;
        *(nint*)(t + Layout.Callbacks.GetNewConnectionId) = (nint)(delegate* unmanaged<nint, byte*, byte*, nuint, nint, int>)&GetNewConnectionId;
        *(nint*)(t + Layout.Callbacks.RemoveConnectionId) = (nint)(delegate* unmanaged<nint, byte*, nint, int>)&RemoveConnectionId;
        *(nint*)(t + Layout.Callbacks.RecvDatagram) = (nint)(delegate* unmanaged<nint, uint, byte*, nuint, nint, int>)&RecvDatagram;
        *(nint*)(t + Layout.Callbacks.RecvStatelessReset) = (nint)(delegate* unmanaged<nint, nint, nint, int>)&RecvStatelessReset;
        *(nint*)(t + Layout.Callbacks.PathValidation) = (nint)(delegate* unmanaged<nint, uint, byte*, int, nint, int>)&PathValidation;
        return t;
    }

    private static QuicConnection Of(nint userData) => (QuicConnection)GCHandle.FromIntPtr(userData).Target!;

    [UnmanagedCallersOnly]
    private static int HandshakeCompleted(nint conn, nint userData)
    {
        try { Of(userData).OnHandshakeCompleted(); return 0; }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int RecvStreamData(nint conn, uint flags, long streamId, ulong offset, byte* data, nuint len, nint userData, nint streamUserData)
    {
        try
        {
            var c = Of(userData);
            if (c.Streams.TryGetValue(streamId, out var s))
                s.OnData(new ReadOnlySpan<byte>(data, (int)len), (flags & Ngtcp2.StreamDataFlagFin) != 0);
            else
            {
                // Stream already given up locally: keep the window moving.
                Ngtcp2.ConnExtendMaxStreamOffset(conn, streamId, len);
                Ngtcp2.ConnExtendMaxOffset(conn, len);
            }
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int AckedStreamDataOffset(nint conn, long streamId, ulong offset, ulong len, nint userData, nint streamUserData)
    {
        try
        {
            if (Of(userData).Streams.TryGetValue(streamId, out var s)) s.OnAcked(offset, len);
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int StreamOpen(nint conn, long streamId, nint userData)
    {
        try { Of(userData).OnStreamOpened(streamId); return 0; }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int StreamClose(nint conn, uint flags, long streamId, ulong appErrorCode, nint userData, nint streamUserData)
    {
        try { Of(userData).OnStreamClosed(streamId, (flags & 1) != 0 ? appErrorCode : null); return 0; }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int StreamReset(nint conn, long streamId, ulong finalSize, ulong appErrorCode, nint userData, nint streamUserData)
    {
        try
        {
            if (Of(userData).Streams.TryGetValue(streamId, out var s))
            {
                s.OnReadAborted(new QuicStreamAbortedException($"peer reset the stream (error {appErrorCode})", appErrorCode));
                s.FinishIfRemoteUni();
            }
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int StreamStopSending(nint conn, long streamId, ulong appErrorCode, nint userData, nint streamUserData)
    {
        try
        {
            if (Of(userData).Streams.TryGetValue(streamId, out var s))
                s.OnWriteAborted(new QuicStreamAbortedException($"peer stopped reading (error {appErrorCode})", appErrorCode));
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int ExtendMaxLocalStreams(nint conn, ulong maxStreams, nint userData)
    {
        try { Of(userData).LocalStreamsExtended = true; return 0; }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int ExtendMaxStreamData(nint conn, long streamId, ulong maxData, nint userData, nint streamUserData)
    {
        try
        {
            var c = Of(userData);
            if (c.Streams.TryGetValue(streamId, out var s) && s.Blocked)
            {
                s.Blocked = false;
                c.StreamWork.Enqueue(s);
                Interlocked.Exchange(ref s.Flags.WorkScheduled, 1);
            }
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static void Rand(byte* dest, nuint len, nint randCtx) =>
        RandomNumberGenerator.Fill(new Span<byte>(dest, (int)len));

    [UnmanagedCallersOnly]
    private static int GetNewConnectionId(nint conn, byte* cid, byte* token, nuint cidLen, nint userData)
    {
        try
        {
            var c = Of(userData);
            c.Endpoint.IssueConnectionId(c, cid, token, (int)cidLen);
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int RemoveConnectionId(nint conn, byte* cid, nint userData)
    {
        try
        {
            var c = Of(userData);
            c.Endpoint.RetireConnectionId(c, cid);
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int RecvDatagram(nint conn, uint flags, byte* data, nuint len, nint userData)
    {
        try { Of(userData).OnDatagram(new ReadOnlySpan<byte>(data, (int)len)); return 0; }
        catch (Exception e) { return Fail(userData, e); }
    }

    [UnmanagedCallersOnly]
    private static int RecvStatelessReset(nint conn, nint sr, nint userData)
    {
        try { Of(userData).StatelessResetReceived = true; return 0; }
        catch (Exception e) { return Fail(userData, e); }
    }

    /// <summary>A path ngtcp2 validated with PATH_CHALLENGE/PATH_RESPONSE (RFC 9000 §8.2): its remote
    /// address becomes the connection's validated address (spec/asport.md §2).</summary>
    [UnmanagedCallersOnly]
    private static int PathValidation(nint conn, uint flags, byte* path, int result, nint userData)
    {
        try
        {
            if (result == Ngtcp2.PathValidationResultSuccess) Of(userData).OnPathValidated(path);
            return 0;
        }
        catch (Exception e) { return Fail(userData, e); }
    }

    /// <summary>ngtcp2_crypto_conn_ref.get_conn: gnutls session → ngtcp2_conn.</summary>
    [UnmanagedCallersOnly]
    public static nint GetConn(byte* connRef) =>
        Of(*(nint*)(connRef + Layout.CryptoConnRef.UserData)).Conn;

    /// <summary>gnutls certificate verify function for pinned certificates.</summary>
    [UnmanagedCallersOnly]
    public static int VerifyCertificate(nint session)
    {
        try
        {
            var connRef = (byte*)GnuTls.SessionGetPtr(session);
            return Of(*(nint*)(connRef + Layout.CryptoConnRef.UserData)).VerifyPeerCertificate();
        }
        catch
        {
            return GnuTls.ECertificateError;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int Fail(nint userData, Exception e)
    {
        try { Of(userData).Endpoint.LogCallbackFailure(e); } catch { /* never escape */ }
        return Ngtcp2.ErrCallbackFailure;
    }
}
