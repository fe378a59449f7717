using System.Net;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>
/// Takes the ASPORT client's UDP associations instead of sockets towards LocalTarget (the transport,
/// spec/asport.md §6.2). Called on the client's receive paths: implementations must not block.
/// </summary>
public interface IAsportUdpHandler
{
    /// <summary>
    /// The first packet of an association the client holds no state for (new, or its state ended).
    /// Returns the state to hold, or null to hold none (the packet was answered or dropped).
    /// The payload is valid during the call only.
    /// </summary>
    IAsportUdpAssociation? Open(AsportPacketWriter peer, ReadOnlySpan<byte> payload);
}

/// <summary>A handler's state for one association.</summary>
public interface IAsportUdpAssociation
{
    /// <summary>True once the association is over; the client then drops its state.</summary>
    bool Ended { get; }

    /// <summary>A later packet of the association; the payload is valid during the call only.</summary>
    void OnPacket(ReadOnlySpan<byte> payload);

    /// <summary>The association ends from the ASPORT side: Dissociate, idle time-out, the connection ended.</summary>
    void End();
}

/// <summary>How a handler answers on one association: Packets back to the server in the client's forward mode (spec/asport.md §3.4).</summary>
public sealed class AsportPacketWriter
{
    private readonly QuicConnection _conn;
    private readonly bool _overStreams;
    private int _nextPacketId;

    internal AsportPacketWriter(QuicConnection conn, ushort id, IPEndPoint? source, ForwardMode mode)
    {
        _conn = conn;
        Id = id;
        Source = source;
        _overStreams = AsportWire.UdpOverStreams(mode);
    }

    /// <summary>The association id the server chose.</summary>
    public ushort Id { get; }

    /// <summary>The UDP source on the public port the server reported (first fragment's address).</summary>
    public IPEndPoint? Source { get; }

    /// <summary>
    /// Sends one payload: fragmented datagrams (native mode; completes at once) or one unidirectional
    /// stream (QUIC mode). False when it could not be sent (too large, no datagrams, connection gone).
    /// </summary>
    public async ValueTask<bool> SendAsync(ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var packetId = (ushort)Interlocked.Increment(ref _nextPacketId);
        if (!_overStreams) return AsportPackets.SendNative(_conn, Id, packetId, payload.Span, Source);
        try
        {
            await AsportPackets.SendOverStreamAsync(_conn, Id, packetId, payload, Source, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            return false;
        }
    }
}
