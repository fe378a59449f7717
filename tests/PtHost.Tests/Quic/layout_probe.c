/* Prints the sizes and field offsets of the ngtcp2 0.12 structs that
   src/PtHost.Quic/Native/Layout.cs hard-codes, one "name=value" per line.
   QuicLayoutTests compiles this with gcc against the -dev headers and
   compares every line with the C# constants. */
#include <stddef.h>
#include <stdio.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <gnutls/gnutls.h>

#define SZ(t) printf(#t ".size=%zu\n", sizeof(t))
#define OFF(t, f) printf(#t "." #f "=%zu\n", offsetof(t, f))

int main(void) {
  printf("NGTCP2_VERSION_NUM=%d\n", NGTCP2_VERSION_NUM);
  SZ(ngtcp2_cid); OFF(ngtcp2_cid, datalen); OFF(ngtcp2_cid, data);
  SZ(ngtcp2_vec); OFF(ngtcp2_vec, base); OFF(ngtcp2_vec, len);
  SZ(ngtcp2_addr); OFF(ngtcp2_addr, addr); OFF(ngtcp2_addr, addrlen);
  SZ(ngtcp2_path); OFF(ngtcp2_path, local); OFF(ngtcp2_path, remote); OFF(ngtcp2_path, user_data);
  SZ(ngtcp2_pkt_info);
  SZ(ngtcp2_pkt_hd); OFF(ngtcp2_pkt_hd, dcid); OFF(ngtcp2_pkt_hd, scid); OFF(ngtcp2_pkt_hd, token); OFF(ngtcp2_pkt_hd, version); OFF(ngtcp2_pkt_hd, type);
  SZ(ngtcp2_settings);
  OFF(ngtcp2_settings, initial_ts); OFF(ngtcp2_settings, log_printf); OFF(ngtcp2_settings, token); OFF(ngtcp2_settings, max_tx_udp_payload_size);
  OFF(ngtcp2_settings, max_window); OFF(ngtcp2_settings, max_stream_window); OFF(ngtcp2_settings, handshake_timeout);
  OFF(ngtcp2_settings, no_pmtud);
  SZ(ngtcp2_transport_params);
  OFF(ngtcp2_transport_params, original_dcid); OFF(ngtcp2_transport_params, retry_scid); OFF(ngtcp2_transport_params, retry_scid_present);
  OFF(ngtcp2_transport_params, initial_max_stream_data_bidi_local);
  OFF(ngtcp2_transport_params, initial_max_stream_data_bidi_remote);
  OFF(ngtcp2_transport_params, initial_max_stream_data_uni);
  OFF(ngtcp2_transport_params, initial_max_data);
  OFF(ngtcp2_transport_params, initial_max_streams_bidi);
  OFF(ngtcp2_transport_params, initial_max_streams_uni);
  OFF(ngtcp2_transport_params, max_idle_timeout);
  OFF(ngtcp2_transport_params, max_udp_payload_size);
  OFF(ngtcp2_transport_params, active_connection_id_limit);
  OFF(ngtcp2_transport_params, ack_delay_exponent);
  OFF(ngtcp2_transport_params, max_ack_delay);
  OFF(ngtcp2_transport_params, max_datagram_frame_size);
  OFF(ngtcp2_transport_params, stateless_reset_token_present);
  OFF(ngtcp2_transport_params, stateless_reset_token);
  SZ(ngtcp2_callbacks);
  OFF(ngtcp2_callbacks, client_initial); OFF(ngtcp2_callbacks, recv_client_initial);
  OFF(ngtcp2_callbacks, recv_crypto_data); OFF(ngtcp2_callbacks, handshake_completed);
  OFF(ngtcp2_callbacks, encrypt); OFF(ngtcp2_callbacks, decrypt); OFF(ngtcp2_callbacks, hp_mask);
  OFF(ngtcp2_callbacks, recv_stream_data); OFF(ngtcp2_callbacks, acked_stream_data_offset);
  OFF(ngtcp2_callbacks, stream_open); OFF(ngtcp2_callbacks, stream_close);
  OFF(ngtcp2_callbacks, recv_stateless_reset); OFF(ngtcp2_callbacks, recv_retry); OFF(ngtcp2_callbacks, extend_max_local_streams_bidi);
  OFF(ngtcp2_callbacks, extend_max_local_streams_uni); OFF(ngtcp2_callbacks, rand);
  OFF(ngtcp2_callbacks, get_new_connection_id); OFF(ngtcp2_callbacks, remove_connection_id);
  OFF(ngtcp2_callbacks, update_key); OFF(ngtcp2_callbacks, path_validation); OFF(ngtcp2_callbacks, stream_reset);
  OFF(ngtcp2_callbacks, extend_max_stream_data);
  OFF(ngtcp2_callbacks, delete_crypto_aead_ctx); OFF(ngtcp2_callbacks, delete_crypto_cipher_ctx);
  OFF(ngtcp2_callbacks, recv_datagram); OFF(ngtcp2_callbacks, get_path_challenge_data);
  OFF(ngtcp2_callbacks, stream_stop_sending); OFF(ngtcp2_callbacks, version_negotiation);
  SZ(ngtcp2_connection_close_error);
  OFF(ngtcp2_connection_close_error, type); OFF(ngtcp2_connection_close_error, error_code);
  OFF(ngtcp2_connection_close_error, frame_type); OFF(ngtcp2_connection_close_error, reason);
  OFF(ngtcp2_connection_close_error, reasonlen);
  SZ(ngtcp2_crypto_conn_ref); OFF(ngtcp2_crypto_conn_ref, get_conn); OFF(ngtcp2_crypto_conn_ref, user_data);
  SZ(ngtcp2_info); OFF(ngtcp2_info, version_num);
  SZ(gnutls_datum_t); OFF(gnutls_datum_t, data); printf("gnutls_datum_t.size#field=%zu\n", offsetof(gnutls_datum_t, size));
  return 0;
}
