using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Transports.Rud;

namespace PtHost.Testing;

/// <summary>
/// Issue 24's RUD attack generators, shared by the attack tests (tests/PtHost.Reliability/Attacks) and the
/// benchmark's under-attack scenario (tests/PtHost.Benchmarks, <c>rud-attack</c>): what a holder of the
/// bridge line (the server's public key) or anyone at all can send to a rud server (spec/rud.md §4.3, §8.3).
/// </summary>
public static class RudAttacks
{
    /// <summary>
    /// Packs STREAM frames of one byte each (stream <paramref name="streamId"/>, the given offsets) into
    /// payloads of at most 1,300 bytes: what one forged Data packet carries.
    /// </summary>
    public static List<byte[]> OneByteFrames(ulong streamId, IEnumerable<ulong> offsets)
    {
        var packets = new List<byte[]>();
        var buf = new byte[1300];
        int n = 0;
        foreach (ulong off in offsets)
        {
            if (n + RudWire.StreamFrameOverhead(streamId, off, 1) + 1 > buf.Length)
            {
                packets.Add(buf[..n]);
                n = 0;
            }
            n += RudWire.WriteStreamFrame(buf.AsSpan(n), streamId, off, "x"u8, final: false);
        }
        if (n > 0) packets.Add(buf[..n]);
        return packets;
    }

    /// <summary>
    /// The sparse-frame attack on one connection a key holder made: one byte in every 4 KiB page of the
    /// 4 MiB window on each of the 256 streams a peer may open, then a PING; returns once the server has
    /// handled all of it (the PING's acknowledgement: packets are handled in order) with the bytes of
    /// frames sent. Paced at one stream a millisecond, a rate the server's socket buffer absorbs.
    /// </summary>
    public static async Task<long> SparseFramesAsync(RudConnection conn, CancellationToken ct = default)
    {
        long sent = 0;
        for (ulong s = 0; s < RudConnection.MaxPeerStreams; s++)
        {
            ct.ThrowIfCancellationRequested();
            ulong id = RudWire.MakeStreamId(s, StreamKind.Asynchronous, 0);
            foreach (var frames in OneByteFrames(id, Enumerable.Range(0, 1024).Select(j => (ulong)j * 4096 + 4095)))
            {
                conn.SendRawPacket(frames);
                sent += frames.Length;
            }
            await Task.Delay(1, ct).ConfigureAwait(false);
        }
        ulong last = conn.SendRawPacket([FrameType.Ping]);
        await Eventually.TrueAsync(() => conn.AcknowledgedUpTo(last), "the server handling the sparse frames", TimeSpan.FromSeconds(90)).ConfigureAwait(false);
        return sent;
    }

    /// <summary>
    /// An Exchange of valid form (spec/rud.md §4.1), protected with the server's key (§3.3: the bridge line
    /// gives it), whose representative, mezzanine and proof are random: it fails only after the key agreement.
    /// </summary>
    public static byte[] ForgedExchange(Random rng, HeaderProtection protection)
    {
        var packet = new byte[RudWire.HandshakeSize + rng.Next(RudWire.MaxHandshakeSize - RudWire.HandshakeSize + 1)];
        var representative = new byte[Elligator2.Size];
        rng.NextBytes(representative);
        int at = RudWire.WriteExchangePlaintext(packet, complete: false, (ulong)rng.NextInt64(1, long.MaxValue), representative, []);
        rng.NextBytes(packet.AsSpan(at, RudWire.MezzanineSize + RudWire.InitiatorProofSize));
        RudEndpoint.ProtectHandshake(protection, packet, fromInitiator: true);
        return packet;
    }

    /// <summary>
    /// A flood of <see cref="ForgedExchange"/>s (what any holder of the bridge line can send) from
    /// <paramref name="sources"/> loopback addresses 127.1.0.1, 127.1.0.2, … at <paramref name="perSecond"/>
    /// in all, until <paramref name="duration"/> passes or <paramref name="ct"/> is cancelled; returns the
    /// number sent.
    /// </summary>
    public static async Task<long> ForgedExchangeFloodAsync(IPEndPoint server, byte[] serverKey, int sources, int perSecond, TimeSpan duration, CancellationToken ct = default)
    {
        using var protection = new HeaderProtection(serverKey);
        long forged = 0;
        int each = Math.Max(1, perSecond / sources);
        await Task.WhenAll(Enumerable.Range(1, sources).Select(i => Task.Run(async () =>
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Bind(new IPEndPoint(IPAddress.Parse($"127.1.{i >> 8}.{i & 255}"), 0));
            s.Connect(server);
            var rng = new Random(i);
            var tick = Stopwatch.StartNew();
            long mine = 0;
            try
            {
                while (!ct.IsCancellationRequested && tick.Elapsed < duration)
                {
                    s.Send(ForgedExchange(rng, protection));
                    Interlocked.Increment(ref forged);
                    if (++mine * 1000 / each > tick.ElapsedMilliseconds) await Task.Delay(5, ct).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) { }
            catch (SocketException) { } // the server went away: the flood is over
        }, CancellationToken.None))).ConfigureAwait(false);
        return forged;
    }
}
