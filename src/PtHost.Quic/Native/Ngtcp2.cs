using System.Runtime.InteropServices;

namespace PtHost.Quic.Native;

/// <summary>libngtcp2.so.9 (0.12.1). Header macros are not exported: the *_versioned
/// functions are bound and called with version 1. Pointers only: a LibraryImport returning
/// string for a static const char* crashes, so strings come back as nint.</summary>
internal static unsafe partial class Ngtcp2
{
    public const string Lib = "libngtcp2.so.9";
    public const int StructVersion = 1;

    public const int ErrInvalidArgument = -201, ErrNoBuf = -203, ErrProto = -205, ErrInvalidState = -206,
        ErrStreamIdBlocked = -208, ErrStreamInUse = -209, ErrStreamDataBlocked = -210, ErrFlowControl = -211,
        ErrStreamShutWr = -221, ErrStreamNotFound = -222, ErrStreamState = -226,
        ErrRecvVersionNegotiation = -229, ErrClosing = -230, ErrDraining = -231, ErrDiscardPkt = -235,
        ErrWriteMore = -240, ErrRetry = -241, ErrDropConn = -242, ErrHandshakeTimeout = -246,
        ErrIdleClose = -248, ErrCallbackFailure = -502;

    public const uint StreamDataFlagFin = 0x01;
    public const uint WriteStreamFlagMore = 0x01, WriteStreamFlagFin = 0x02;
    public const uint WriteDatagramFlagMore = 0x01;
    public const uint ProtoVerV1 = 0x00000001;
    public const int CcerrTypeApplication = 1;

    /// <summary>ngtcp2_path_validation_result.</summary>
    public const int PathValidationResultSuccess = 0;

    [LibraryImport(Lib, EntryPoint = "ngtcp2_version")] public static partial nint Version(int least);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_strerror")] public static partial nint StrError(int err);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_err_is_fatal")] public static partial int ErrIsFatal(int err);

    [LibraryImport(Lib, EntryPoint = "ngtcp2_settings_default_versioned")]
    public static partial void SettingsDefault(int version, byte* settings);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_transport_params_default_versioned")]
    public static partial void TransportParamsDefault(int version, byte* parameters);

    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_client_new_versioned")]
    public static partial int ConnClientNew(nint* pconn, byte* dcid, byte* scid, byte* path, uint version,
        int callbacksVersion, byte* callbacks, int settingsVersion, byte* settings,
        int paramsVersion, byte* parameters, nint mem, nint userData);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_server_new_versioned")]
    public static partial int ConnServerNew(nint* pconn, byte* dcid, byte* scid, byte* path, uint version,
        int callbacksVersion, byte* callbacks, int settingsVersion, byte* settings,
        int paramsVersion, byte* parameters, nint mem, nint userData);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_del")] public static partial void ConnDel(nint conn);

    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_read_pkt_versioned")]
    public static partial int ConnReadPkt(nint conn, byte* path, int pktInfoVersion, byte* pi, byte* pkt, nuint len, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_write_pkt_versioned")]
    public static partial nint ConnWritePkt(nint conn, byte* path, int pktInfoVersion, byte* pi, byte* dest, nuint len, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_writev_stream_versioned")]
    public static partial nint ConnWritevStream(nint conn, byte* path, int pktInfoVersion, byte* pi, byte* dest, nuint len,
        nint* pdatalen, uint flags, long streamId, byte* datav, nuint datavcnt, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_writev_datagram_versioned")]
    public static partial nint ConnWritevDatagram(nint conn, byte* path, int pktInfoVersion, byte* pi, byte* dest, nuint len,
        int* paccepted, uint flags, ulong dgramId, byte* datav, nuint datavcnt, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_write_connection_close_versioned")]
    public static partial nint ConnWriteConnectionClose(nint conn, byte* path, int pktInfoVersion, byte* pi, byte* dest, nuint len,
        byte* ccerr, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_connection_close_error_set_application_error")]
    public static partial void CcerrSetApplicationError(byte* ccerr, ulong code, byte* reason, nuint reasonLen);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_connection_close_error_set_transport_error_liberr")]
    public static partial void ConnectionCloseErrorSetTransportErrorLiberr(byte* ccerr, int liberr, byte* reason, nuint reasonLen);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_connection_close_error_set_transport_error_tls_alert")]
    public static partial void ConnectionCloseErrorSetTransportErrorTlsAlert(byte* ccerr, byte alert, byte* reason, nuint reasonLen);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_connection_close_error_default")]
    public static partial void CcerrDefault(byte* ccerr);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_connection_close_error")]
    public static partial void ConnGetConnectionCloseError(nint conn, byte* ccerr);

    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_expiry")] public static partial ulong ConnGetExpiry(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_handle_expiry")] public static partial int ConnHandleExpiry(nint conn, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_pto")] public static partial ulong ConnGetPto(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_update_pkt_tx_time")] public static partial void ConnUpdatePktTxTime(nint conn, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_handshake_completed")] public static partial int ConnGetHandshakeCompleted(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_is_in_closing_period")] public static partial int ConnIsInClosingPeriod(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_is_in_draining_period")] public static partial int ConnIsInDrainingPeriod(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_max_tx_udp_payload_size")] public static partial nuint ConnGetMaxTxUdpPayloadSize(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_path_max_tx_udp_payload_size")] public static partial nuint ConnGetPathMaxTxUdpPayloadSize(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_remote_transport_params")] public static partial byte* ConnGetRemoteTransportParams(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_tls_alert")] public static partial byte ConnGetTlsAlert(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_set_tls_native_handle")] public static partial void ConnSetTlsNativeHandle(nint conn, nint tls);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_path")] public static partial byte* ConnGetPath(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_num_scid")] public static partial nuint ConnGetNumScid(nint conn);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_get_scid")] public static partial nuint ConnGetScid(nint conn, byte* dest);

    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_open_bidi_stream")] public static partial int ConnOpenBidiStream(nint conn, long* streamId, nint userData);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_open_uni_stream")] public static partial int ConnOpenUniStream(nint conn, long* streamId, nint userData);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_shutdown_stream")] public static partial int ConnShutdownStream(nint conn, long streamId, ulong code);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_shutdown_stream_read")] public static partial int ConnShutdownStreamRead(nint conn, long streamId, ulong code);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_shutdown_stream_write")] public static partial int ConnShutdownStreamWrite(nint conn, long streamId, ulong code);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_extend_max_stream_offset")] public static partial int ConnExtendMaxStreamOffset(nint conn, long streamId, ulong n);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_extend_max_offset")] public static partial void ConnExtendMaxOffset(nint conn, ulong n);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_extend_max_streams_bidi")] public static partial void ConnExtendMaxStreamsBidi(nint conn, nuint n);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_conn_extend_max_streams_uni")] public static partial void ConnExtendMaxStreamsUni(nint conn, nuint n);

    [LibraryImport(Lib, EntryPoint = "ngtcp2_accept")] public static partial int Accept(byte* hd, byte* pkt, nuint len);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_pkt_write_stateless_reset")]
    public static partial nint PktWriteStatelessReset(byte* dest, nuint len, byte* token, byte* rand, nuint randLen);

    public static string ErrorText(int code)
    {
        var p = StrError(code);
        return (p == 0 ? "unknown" : Marshal.PtrToStringUTF8(p)) + " (" + code + ")";
    }
}

/// <summary>libngtcp2_crypto_gnutls.so.2: the TLS glue; its callbacks are installed by address.</summary>
internal static unsafe partial class Ngtcp2Crypto
{
    public const string Lib = "libngtcp2_crypto_gnutls.so.2";

    [LibraryImport(Lib, EntryPoint = "ngtcp2_crypto_gnutls_configure_client_session")]
    public static partial int ConfigureClientSession(nint session);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_crypto_gnutls_configure_server_session")]
    public static partial int ConfigureServerSession(nint session);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_crypto_generate_retry_token")]
    public static partial nint GenerateRetryToken(byte* token, byte* secret, nuint secretLen, uint version, byte* remoteAddr, uint remoteAddrLen,
        byte* retryScid, byte* odcid, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_crypto_verify_retry_token")]
    public static partial int VerifyRetryToken(byte* odcid, byte* token, nuint tokenLen, byte* secret, nuint secretLen, uint version,
        byte* remoteAddr, uint remoteAddrLen, byte* dcid, ulong timeout, ulong ts);
    [LibraryImport(Lib, EntryPoint = "ngtcp2_crypto_write_retry")]
    public static partial nint WriteRetry(byte* dest, nuint destLen, uint version, byte* dcid, byte* scid, byte* odcid, byte* token, nuint tokenLen);
    /// <summary>NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN and NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY (ngtcp2_crypto.h, 0.12.1).</summary>
    public const int MaxRetryTokenLen = 78, RetryTokenMagic = 0xb6;

    [LibraryImport(Lib, EntryPoint = "ngtcp2_crypto_generate_stateless_reset_token")]
    public static partial int GenerateStatelessResetToken(byte* token, byte* secret, nuint secretLen, byte* cid);
}

/// <summary>libgnutls.so.30 (3.7).</summary>
internal static unsafe partial class GnuTls
{
    public const string Lib = "libgnutls.so.30";
    public const uint Server = 1, Client = 2, EnableEarlyData = 1 << 20, NoEndOfEarlyData = 1 << 22;
    public const int CrdCertificate = 1, X509FmtPem = 1, NameDns = 1, AlpnMandatory = 1;
    public const int ECertificateError = -43;

    [LibraryImport(Lib, EntryPoint = "gnutls_check_version")] public static partial nint CheckVersion(byte* req);
    [LibraryImport(Lib, EntryPoint = "gnutls_strerror")] public static partial nint StrError(int err);
    [LibraryImport(Lib, EntryPoint = "gnutls_init")] public static partial int Init(nint* session, uint flags);
    [LibraryImport(Lib, EntryPoint = "gnutls_deinit")] public static partial void Deinit(nint session);
    [LibraryImport(Lib, EntryPoint = "gnutls_priority_set_direct")] public static partial int PrioritySetDirect(nint session, byte* priorities, nint* errPos);
    [LibraryImport(Lib, EntryPoint = "gnutls_certificate_allocate_credentials")] public static partial int CertificateAllocateCredentials(nint* cred);
    [LibraryImport(Lib, EntryPoint = "gnutls_certificate_free_credentials")] public static partial void CertificateFreeCredentials(nint cred);
    [LibraryImport(Lib, EntryPoint = "gnutls_certificate_set_x509_key_mem")] public static partial int CertificateSetX509KeyMem(nint cred, byte* certDatum, byte* keyDatum, int format);
    [LibraryImport(Lib, EntryPoint = "gnutls_certificate_set_x509_system_trust")] public static partial int CertificateSetX509SystemTrust(nint cred);
    [LibraryImport(Lib, EntryPoint = "gnutls_certificate_set_verify_function")] public static partial void CertificateSetVerifyFunction(nint cred, nint func);
    [LibraryImport(Lib, EntryPoint = "gnutls_certificate_get_peers")] public static partial byte* CertificateGetPeers(nint session, uint* count);
    [LibraryImport(Lib, EntryPoint = "gnutls_credentials_set")] public static partial int CredentialsSet(nint session, int type, nint cred);
    [LibraryImport(Lib, EntryPoint = "gnutls_alpn_set_protocols")] public static partial int AlpnSetProtocols(nint session, byte* protocols, uint count, uint flags);
    [LibraryImport(Lib, EntryPoint = "gnutls_alpn_get_selected_protocol")] public static partial int AlpnGetSelectedProtocol(nint session, byte* datum);
    [LibraryImport(Lib, EntryPoint = "gnutls_session_set_ptr")] public static partial void SessionSetPtr(nint session, nint ptr);
    [LibraryImport(Lib, EntryPoint = "gnutls_session_get_ptr")] public static partial nint SessionGetPtr(nint session);
    [LibraryImport(Lib, EntryPoint = "gnutls_server_name_set")] public static partial int ServerNameSet(nint session, int type, byte* name, nuint len);
    [LibraryImport(Lib, EntryPoint = "gnutls_session_set_verify_cert")] public static partial void SessionSetVerifyCert(nint session, byte* hostname, uint flags);
    [LibraryImport(Lib, EntryPoint = "gnutls_prf_rfc5705")]
    public static partial int PrfRfc5705(nint session, nuint labelSize, byte* label, nuint contextSize, byte* context, nuint outSize, byte* output);

    public static string ErrorText(int code)
    {
        var p = StrError(code);
        return (p == 0 ? "unknown" : Marshal.PtrToStringUTF8(p)) + " (" + code + ")";
    }
}
