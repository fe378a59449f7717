namespace PtHost.Quic.Native;

/// <summary>
/// Every ngtcp2 0.12.1 / gnutls 3.7 struct size and field offset the binding uses (x86-64 and
/// other LP64 Linux). This is the only file that knows the C ABI; the values were taken from gcc
/// and QuicLayoutTests re-checks each of them against the -dev headers (tests/PtHost.Tests/Quic/
/// layout_probe.c). ngtcp2 1.x changes these layouts: QuicLibrary refuses any other version.
/// </summary>
internal static class Layout
{
    /// <summary>NGTCP2_VERSION_NUM of 0.12.1.</summary>
    public const int VersionNum = 0x000c01;

    public const int MaxCidLen = 20;
    public const int StatelessResetTokenLen = 16;
    public const int MinStatelessResetRandLen = 5;

    public static class Cid { public const int Size = 32, DataLen = 0, Data = 8; }
    public static class Vec { public const int Size = 16, Base = 0, Len = 8; }
    public static class Addr { public const int Size = 16, AddrPtr = 0, AddrLen = 8; }
    public static class Path { public const int Size = 40, Local = 0, Remote = 16, UserData = 32; }
    public static class PktInfo { public const int Size = 8; }
    public static class PktHd { public const int Size = 112, Dcid = 0, Scid = 32, Token = 72, Version = 104, Type = 108; }

    public static class Settings
    {
        public const int Size = 184, CcAlgo = 40, InitialTs = 48, LogPrintf = 64, MaxTxUdpPayloadSize = 72,
            Token = 80, MaxWindow = 104, MaxStreamWindow = 112, HandshakeTimeout = 136, NoPmtud = 180;
    }

    public static class TransportParams
    {
        public const int Size = 344, OriginalDcid = 96,
            InitialMaxStreamDataBidiLocal = 192, InitialMaxStreamDataBidiRemote = 200,
            InitialMaxStreamDataUni = 208, InitialMaxData = 216,
            RetryScid = 160, RetryScidPresent = 290,
            InitialMaxStreamsBidi = 224, InitialMaxStreamsUni = 232, MaxIdleTimeout = 240,
            MaxUdpPayloadSize = 248, ActiveConnectionIdLimit = 256, AckDelayExponent = 264,
            MaxAckDelay = 272, MaxDatagramFrameSize = 280, StatelessResetTokenPresent = 288,
            StatelessResetToken = 292;
    }

    /// <summary>ngtcp2_callbacks: 40 function pointers in header order.</summary>
    public static class Callbacks
    {
        public const int Size = 320;
        public const int ClientInitial = 0, RecvClientInitial = 8, RecvCryptoData = 16,
            HandshakeCompleted = 24, Encrypt = 40, Decrypt = 48, HpMask = 56,
            RecvStreamData = 64, AckedStreamDataOffset = 72, StreamOpen = 80, StreamClose = 88, RecvStatelessReset = 96,
            RecvRetry = 104, ExtendMaxLocalStreamsBidi = 112, ExtendMaxLocalStreamsUni = 120,
            Rand = 128, GetNewConnectionId = 136, RemoveConnectionId = 144, UpdateKey = 152, PathValidation = 160,
            StreamReset = 176, ExtendMaxStreamData = 200, DeleteCryptoAeadCtx = 232,
            DeleteCryptoCipherCtx = 240, RecvDatagram = 248, GetPathChallengeData = 272,
            StreamStopSending = 280, VersionNegotiation = 288;
    }

    public static class ConnectionCloseError
    {
        public const int Size = 40, Type = 0, ErrorCode = 8, FrameType = 16, Reason = 24, ReasonLen = 32;
    }

    public static class CryptoConnRef { public const int Size = 16, GetConn = 0, UserData = 8; }
    public static class Info { public const int Size = 16, VersionNum = 4; }
    public static class GnutlsDatum { public const int Size = 16, Data = 0, DataSize = 8; }

    /// <summary>Name → value for every constant above, in the layout_probe.c naming.</summary>
    public static IReadOnlyDictionary<string, long> All() => new Dictionary<string, long>
    {
        ["NGTCP2_VERSION_NUM"] = VersionNum,
        ["ngtcp2_cid.size"] = Cid.Size, ["ngtcp2_cid.datalen"] = Cid.DataLen, ["ngtcp2_cid.data"] = Cid.Data,
        ["ngtcp2_vec.size"] = Vec.Size, ["ngtcp2_vec.base"] = Vec.Base, ["ngtcp2_vec.len"] = Vec.Len,
        ["ngtcp2_addr.size"] = Addr.Size, ["ngtcp2_addr.addr"] = Addr.AddrPtr, ["ngtcp2_addr.addrlen"] = Addr.AddrLen,
        ["ngtcp2_path.size"] = Path.Size, ["ngtcp2_path.local"] = Path.Local, ["ngtcp2_path.remote"] = Path.Remote,
        ["ngtcp2_path.user_data"] = Path.UserData,
        ["ngtcp2_pkt_info.size"] = PktInfo.Size,
        ["ngtcp2_pkt_hd.size"] = PktHd.Size, ["ngtcp2_pkt_hd.dcid"] = PktHd.Dcid, ["ngtcp2_pkt_hd.scid"] = PktHd.Scid,
        ["ngtcp2_pkt_hd.token"] = PktHd.Token, ["ngtcp2_pkt_hd.version"] = PktHd.Version, ["ngtcp2_pkt_hd.type"] = PktHd.Type,
        ["ngtcp2_settings.size"] = Settings.Size, ["ngtcp2_settings.initial_ts"] = Settings.InitialTs,
        ["ngtcp2_settings.log_printf"] = Settings.LogPrintf, ["ngtcp2_settings.token"] = Settings.Token,
        ["ngtcp2_settings.max_tx_udp_payload_size"] = Settings.MaxTxUdpPayloadSize,
        ["ngtcp2_settings.max_window"] = Settings.MaxWindow, ["ngtcp2_settings.max_stream_window"] = Settings.MaxStreamWindow,
        ["ngtcp2_settings.handshake_timeout"] = Settings.HandshakeTimeout, ["ngtcp2_settings.no_pmtud"] = Settings.NoPmtud,
        ["ngtcp2_transport_params.size"] = TransportParams.Size,
        ["ngtcp2_transport_params.original_dcid"] = TransportParams.OriginalDcid,
        ["ngtcp2_transport_params.retry_scid"] = TransportParams.RetryScid,
        ["ngtcp2_transport_params.retry_scid_present"] = TransportParams.RetryScidPresent,
        ["ngtcp2_transport_params.initial_max_stream_data_bidi_local"] = TransportParams.InitialMaxStreamDataBidiLocal,
        ["ngtcp2_transport_params.initial_max_stream_data_bidi_remote"] = TransportParams.InitialMaxStreamDataBidiRemote,
        ["ngtcp2_transport_params.initial_max_stream_data_uni"] = TransportParams.InitialMaxStreamDataUni,
        ["ngtcp2_transport_params.initial_max_data"] = TransportParams.InitialMaxData,
        ["ngtcp2_transport_params.initial_max_streams_bidi"] = TransportParams.InitialMaxStreamsBidi,
        ["ngtcp2_transport_params.initial_max_streams_uni"] = TransportParams.InitialMaxStreamsUni,
        ["ngtcp2_transport_params.max_idle_timeout"] = TransportParams.MaxIdleTimeout,
        ["ngtcp2_transport_params.max_udp_payload_size"] = TransportParams.MaxUdpPayloadSize,
        ["ngtcp2_transport_params.active_connection_id_limit"] = TransportParams.ActiveConnectionIdLimit,
        ["ngtcp2_transport_params.ack_delay_exponent"] = TransportParams.AckDelayExponent,
        ["ngtcp2_transport_params.max_ack_delay"] = TransportParams.MaxAckDelay,
        ["ngtcp2_transport_params.max_datagram_frame_size"] = TransportParams.MaxDatagramFrameSize,
        ["ngtcp2_transport_params.stateless_reset_token_present"] = TransportParams.StatelessResetTokenPresent,
        ["ngtcp2_transport_params.stateless_reset_token"] = TransportParams.StatelessResetToken,
        ["ngtcp2_callbacks.size"] = Callbacks.Size,
        ["ngtcp2_callbacks.client_initial"] = Callbacks.ClientInitial,
        ["ngtcp2_callbacks.recv_client_initial"] = Callbacks.RecvClientInitial,
        ["ngtcp2_callbacks.recv_crypto_data"] = Callbacks.RecvCryptoData,
        ["ngtcp2_callbacks.handshake_completed"] = Callbacks.HandshakeCompleted,
        ["ngtcp2_callbacks.encrypt"] = Callbacks.Encrypt, ["ngtcp2_callbacks.decrypt"] = Callbacks.Decrypt,
        ["ngtcp2_callbacks.hp_mask"] = Callbacks.HpMask,
        ["ngtcp2_callbacks.recv_stream_data"] = Callbacks.RecvStreamData,
        ["ngtcp2_callbacks.acked_stream_data_offset"] = Callbacks.AckedStreamDataOffset,
        ["ngtcp2_callbacks.stream_open"] = Callbacks.StreamOpen, ["ngtcp2_callbacks.stream_close"] = Callbacks.StreamClose,
        ["ngtcp2_callbacks.recv_stateless_reset"] = Callbacks.RecvStatelessReset,
        ["ngtcp2_callbacks.recv_retry"] = Callbacks.RecvRetry, ["ngtcp2_callbacks.path_validation"] = Callbacks.PathValidation,
        ["ngtcp2_callbacks.extend_max_local_streams_bidi"] = Callbacks.ExtendMaxLocalStreamsBidi,
        ["ngtcp2_callbacks.extend_max_local_streams_uni"] = Callbacks.ExtendMaxLocalStreamsUni,
        ["ngtcp2_callbacks.rand"] = Callbacks.Rand,
        ["ngtcp2_callbacks.get_new_connection_id"] = Callbacks.GetNewConnectionId,
        ["ngtcp2_callbacks.remove_connection_id"] = Callbacks.RemoveConnectionId,
        ["ngtcp2_callbacks.update_key"] = Callbacks.UpdateKey, ["ngtcp2_callbacks.stream_reset"] = Callbacks.StreamReset,
        ["ngtcp2_callbacks.extend_max_stream_data"] = Callbacks.ExtendMaxStreamData,
        ["ngtcp2_callbacks.delete_crypto_aead_ctx"] = Callbacks.DeleteCryptoAeadCtx,
        ["ngtcp2_callbacks.delete_crypto_cipher_ctx"] = Callbacks.DeleteCryptoCipherCtx,
        ["ngtcp2_callbacks.recv_datagram"] = Callbacks.RecvDatagram,
        ["ngtcp2_callbacks.get_path_challenge_data"] = Callbacks.GetPathChallengeData,
        ["ngtcp2_callbacks.stream_stop_sending"] = Callbacks.StreamStopSending,
        ["ngtcp2_callbacks.version_negotiation"] = Callbacks.VersionNegotiation,
        ["ngtcp2_connection_close_error.size"] = ConnectionCloseError.Size,
        ["ngtcp2_connection_close_error.type"] = ConnectionCloseError.Type,
        ["ngtcp2_connection_close_error.error_code"] = ConnectionCloseError.ErrorCode,
        ["ngtcp2_connection_close_error.frame_type"] = ConnectionCloseError.FrameType,
        ["ngtcp2_connection_close_error.reason"] = ConnectionCloseError.Reason,
        ["ngtcp2_connection_close_error.reasonlen"] = ConnectionCloseError.ReasonLen,
        ["ngtcp2_crypto_conn_ref.size"] = CryptoConnRef.Size, ["ngtcp2_crypto_conn_ref.get_conn"] = CryptoConnRef.GetConn,
        ["ngtcp2_crypto_conn_ref.user_data"] = CryptoConnRef.UserData,
        ["ngtcp2_info.size"] = Info.Size, ["ngtcp2_info.version_num"] = Info.VersionNum,
        ["gnutls_datum_t.size"] = GnutlsDatum.Size, ["gnutls_datum_t.data"] = GnutlsDatum.Data,
        ["gnutls_datum_t.size#field"] = GnutlsDatum.DataSize,
    };
}
