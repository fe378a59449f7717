using System.Buffers;
using System.Net;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>Sending and receiving Packet commands in both UDP modes (spec/asport.md §3.5).</summary>
internal static class AsportPackets
{
    /// <summary>Largest UDP payload carried (a UDP datagram cannot be larger).</summary>
    public const int MaxPayload = 65535;
    /// <summary>Largest command read from a uni stream: header, Packet fixed part, address, payload.</summary>
    public const int MaxStreamCommand = AsportWire.HeaderSize + AsportWire.PacketFixedSize + AsportWire.MaxAddressSize + MaxPayload;

    /// <summary>Native mode: fragments to the connection's maximum datagram size, first fragment
    /// with the address. False when the payload cannot be sent (too many fragments, no datagrams).</summary>
    public static bool SendNative(QuicConnection conn, ushort assoc, ushort packetId, ReadOnlySpan<byte> payload, IPEndPoint? address)
    {
        var max = conn.MaxDatagramPayloadSize;
        var total = AsportWire.FragmentCount(payload.Length, max, address);
        if (total < 0) return false;
        var buf = ArrayPool<byte>.Shared.Rent(max);
        try
        {
            var ok = true;
            for (var i = 0; i < total; i++)
            {
                var n = AsportWire.WriteFragment(buf, assoc, packetId, i, total, payload, max, address);
                ok &= conn.TrySendDatagram(buf.AsSpan(0, n));
            }
            return ok;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }

    /// <summary>QUIC mode: one unidirectional stream per packet, one fragment.</summary>
    public static async Task SendOverStreamAsync(QuicConnection conn, ushort assoc, ushort packetId, ReadOnlyMemory<byte> payload, IPEndPoint? address, CancellationToken ct)
    {
        var buf = ArrayPool<byte>.Shared.Rent(AsportWire.HeaderSize + AsportWire.PacketFixedSize + AsportWire.MaxAddressSize + payload.Length);
        try
        {
            var n = AsportWire.WritePacketHeader(buf, new PacketHeader(assoc, packetId, 1, 0, (ushort)payload.Length, address));
            payload.Span.CopyTo(buf.AsSpan(n));
            var s = await conn.OpenUnidirectionalStreamAsync(ct).ConfigureAwait(false);
            await using (s.ConfigureAwait(false))
            {
                await s.WriteAsync(buf.AsMemory(0, n + payload.Length), ct).ConfigureAwait(false);
                s.CompleteWrites();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }

    /// <summary>Reads a whole unidirectional stream (one command) into a pooled buffer; null when
    /// it exceeds <paramref name="limit"/> (the stream is then aborted).</summary>
    public static async Task<(byte[] Buffer, int Length)?> ReadStreamCommandAsync(QuicStream s, int limit, CancellationToken ct)
    {
        var buf = ArrayPool<byte>.Shared.Rent(Math.Min(limit + 1, 4096));
        var len = 0;
        try
        {
            while (true)
            {
                if (len == buf.Length)
                {
                    if (buf.Length > limit) break;
                    var bigger = ArrayPool<byte>.Shared.Rent(Math.Min(limit + 1, buf.Length * 2));
                    buf.AsSpan(0, len).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buf);
                    buf = bigger;
                }
                var n = await s.ReadAsync(buf.AsMemory(len), ct).ConfigureAwait(false);
                if (n == 0) return (buf, len);
                len += n;
                if (len > limit) break;
            }
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(buf);
            throw;
        }
        ArrayPool<byte>.Shared.Return(buf);
        s.Abort(1);
        return null;
    }
}
