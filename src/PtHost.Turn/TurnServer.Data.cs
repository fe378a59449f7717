using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>Data both ways: Send indications and ChannelData to peers, datagrams from peers as Data indications or ChannelData (RFC 5766 §10, §11.6).</summary>
public sealed partial class TurnServer
{
    // ---- data: client → peer -------------------------------------------------------------------

    private ValueTask HandleSend(TurnClient client, ReadOnlyMemory<byte> packet, StunMessage message)
    {
        Allocation? allocation;
        lock (_lock) _allocations.TryGetValue(client.Key, out allocation);
        Span<ushort> unknown = stackalloc ushort[1];
        if (allocation?.Association is not { } session || message.UnknownRequired(unknown) > 0
            || !message.TryGet(StunAttribute.XorPeerAddress, out var pa) || !Stun.TryReadXorAddress(pa, message.TransactionId, out var peer)
            || !message.TryGet(StunAttribute.Data, out var data))
        {
            Drop(client, "Send indication without allocation, XOR-PEER-ADDRESS or DATA");
            return ValueTask.CompletedTask;
        }
        if (!HasPermission(allocation, peer))
        {
            Drop(client, $"Send indication to {peer} without permission");
            return ValueTask.CompletedTask;
        }
        packet.Span.Overlaps(data, out int offset);
        _counters?.AddBytesIn(data.Length);
        return session.SendAsync(peer, packet.Slice(offset, data.Length), _stop.Token); // copies before returning (IAssociation)
    }

    private ValueTask HandleChannelData(TurnClient client, ReadOnlyMemory<byte> packet)
    {
        var span = packet.Span;
        ushort channel = BinaryPrimitives.ReadUInt16BigEndian(span);
        int length = BinaryPrimitives.ReadUInt16BigEndian(span[2..]);
        if (4 + length > span.Length)
        {
            Drop(client, "ChannelData length runs past the message");
            return ValueTask.CompletedTask;
        }
        Allocation? allocation;
        lock (_lock) _allocations.TryGetValue(client.Key, out allocation);
        if (allocation?.Association is not { } session)
        {
            Drop(client, "ChannelData without allocation");
            return ValueTask.CompletedTask;
        }
        PeerAddress peer;
        var now = _time.GetUtcNow();
        lock (allocation.Lock)
        {
            if (!allocation.Channels.TryGetValue(channel, out var binding) || binding.Expires < now)
            {
                Drop(client, $"ChannelData on unbound channel 0x{channel:x4}");
                return ValueTask.CompletedTask;
            }
            peer = binding.Peer;
        }
        if (!HasPermission(allocation, peer))
        {
            Drop(client, $"ChannelData to {peer} without permission");
            return ValueTask.CompletedTask;
        }
        _counters?.AddBytesIn(length);
        return session.SendAsync(peer, packet.Slice(4, length), _stop.Token); // copies before returning (IAssociation)
    }

    private bool HasPermission(Allocation allocation, PeerAddress peer)
    {
        var now = _time.GetUtcNow();
        lock (allocation.Lock) return allocation.Permissions.TryGetValue(peer.Unmapped().WithPort(0), out var expires) && expires >= now;
    }

    // ---- data: peer → client (RFC 5766 §10.3, §11.6) -------------------------------------------

    private async Task RelayFromPeersAsync(Allocation allocation, IAssociation session)
    {
        int max = Math.Min(session.MaxDatagramSize, ushort.MaxValue - DataHeaderRoom);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(DataHeaderRoom + max + 4);
        try
        {
            while (!allocation.Deleted)
            {
                var (peer, n) = await session.ReceiveAsync(buffer.AsMemory(DataHeaderRoom, max), _stop.Token).ConfigureAwait(false);
                if (n < 0)
                {
                    if (!allocation.Deleted) _log.AssociationEnded(allocation.Id);
                    Remove(allocation);
                    return;
                }
                if (!HasPermission(allocation, peer)) continue; // RFC 5766 §10.3: no permission, no delivery
                _counters?.AddBytesOut(n);
                ushort channel;
                lock (allocation.Lock)
                    channel = allocation.ChannelOf.TryGetValue(peer.Unmapped(), out var c) && allocation.Channels.TryGetValue(c, out var b) && b.Expires >= _time.GetUtcNow() ? c : (ushort)0;
                if (channel != 0)
                {
                    int start = DataHeaderRoom - 4;
                    BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(start), channel);
                    BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(start + 2), (ushort)n);
                    int total = 4 + n;
                    if (allocation.Client.IsStream)
                    {
                        int padded = Stun.Pad(total);
                        buffer.AsSpan(start + total, padded - total).Clear();
                        total = padded;
                    }
                    allocation.Client.Send(buffer.AsSpan(start, total));
                }
                else
                {
                    int header = Stun.HeaderLength + 4 + (peer.IsIPv4 ? 8 : 20) + 4;
                    int start = DataHeaderRoom - header;
                    BuildDataIndication(buffer.AsSpan(start), peer, n);
                    int padded = Stun.Pad(n);
                    buffer.AsSpan(DataHeaderRoom + n, padded - n).Clear();
                    allocation.Client.Send(buffer.AsSpan(start, header + padded));
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or IOException or InvalidDataException or System.Net.Sockets.SocketException)
        {
            if (!allocation.Deleted) _log.AssociationFailed(allocation.Id, e.Message);
            Remove(allocation);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes a Data indication's header in front of <paramref name="length"/> payload bytes already in place.</summary>
    private static void BuildDataIndication(Span<byte> at, PeerAddress peer, int length)
    {
        BinaryPrimitives.WriteUInt16BigEndian(at, Stun.TypeOf(StunMethod.Data, StunClass.Indication));
        BinaryPrimitives.WriteUInt32BigEndian(at[4..], Stun.MagicCookie);
        RandomNumberGenerator.Fill(at.Slice(8, 12));
        int o = Stun.HeaderLength;
        BinaryPrimitives.WriteUInt16BigEndian(at[o..], StunAttribute.XorPeerAddress);
        int addressLength = Stun.WriteXorAddress(at[(o + 4)..], peer, at.Slice(8, 12));
        BinaryPrimitives.WriteUInt16BigEndian(at[(o + 2)..], (ushort)addressLength);
        o += 4 + addressLength;
        BinaryPrimitives.WriteUInt16BigEndian(at[o..], StunAttribute.Data);
        BinaryPrimitives.WriteUInt16BigEndian(at[(o + 2)..], (ushort)length);
        o += 4;
        BinaryPrimitives.WriteUInt16BigEndian(at[2..], (ushort)(o - Stun.HeaderLength + Stun.Pad(length)));
    }
}
