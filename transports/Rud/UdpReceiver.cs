using System.Net;
using System.Net.Sockets;
using PtHost.Net.Udp;

namespace PtHost.Transports.Rud;

/// <summary>
/// Reads up to <see cref="Batch"/> datagrams per system call (recvmmsg(2), PtHost.Net's
/// <see cref="DatagramBatchReceiver"/>) on the endpoint's own receive thread, after poll(2) with a
/// short timeout so the thread notices a stop; the endpoint then handles the whole batch under one
/// acquisition of its lock and sends what it made due once (spec/rud.md §9.4). Buffers are
/// allocated once, pinned.
/// </summary>
internal sealed unsafe class UdpReceiver
{
    public const int Batch = DatagramBatchReceiver.DefaultBatch;
    private const int SlotSize = RudWire.MaxReceiveSize + 1; // one more, to see oversized datagrams

    private readonly DatagramBatchReceiver _batch = new(Batch, SlotSize);

    /// <summary>The datagram <paramref name="i"/> of the last <see cref="Receive"/>.</summary>
    public Span<byte> Packet(int i) => _batch.Packet(i).Span;

    /// <summary>Writes datagram <paramref name="i"/>'s source address into <paramref name="into"/> (same address family as the socket).</summary>
    public void Source(int i, SocketAddress into) => _batch.Source(i, into);

    /// <summary>
    /// Waits up to <paramref name="timeoutMs"/> for datagrams and reads what is queued (at most
    /// <see cref="Batch"/>). Returns how many; 0 on timeout or a transient error; -1 when the
    /// socket is closed.
    /// </summary>
    public int Receive(Socket socket, int timeoutMs) => _batch.Receive(socket, timeoutMs);
}
