using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net.Udp;

namespace PtHost.Socks;

/// <summary>
/// SOCKS5 UDP ASSOCIATE (RFC 1928 §7, spec/ipc.md §5.12): one UDP association through the transport (spec/turn.md §5)
/// per request, the server process applying TURN's peer rules (spec/turn.md §6). The client's datagrams arrive on a UDP
/// socket of the front end's address with the header <c>RSV(2) FRAG ATYP DST.ADDR DST.PORT</c>; answers go back with
/// the peer in that header. FRAG ≠ 0, a domain name, or a datagram from another address than the client's are dropped
/// and counted. The association ends with the TCP control connection, and the control connection with the association.
/// </summary>
internal static class Socks5UdpAssociation
{
    public static readonly TimeSpan OpenTimeout = TimeSpan.FromSeconds(30);
    private const int MaxHeader = 3 + 1 + 16 + 2;
    /// <summary>Datagrams read per recvmmsg(2): each slot holds the largest UDP payload, so a batch is 512 KiB per association.</summary>
    private const int ReceiveBatch = 8;
    /// <summary>Answers go to the client a batch per sendmmsg(2) from a pooled buffer of this size.</summary>
    private const int ReplyBuffer = 2 * 65536 + MaxHeader;
    /// <summary>SO_RCVBUF and SO_SNDBUF asked for (capped by net.core.rmem_max / wmem_max).</summary>
    private const int SocketBuffer = 4 << 20;
    /// <summary>Longest the client's reader waits for a congested carrier before it reads on.</summary>
    private static readonly TimeSpan MaxPause = TimeSpan.FromMilliseconds(100);

    public static async Task RunAsync(string transport, NetworkStream control, Destination expected, IClientFactory factory, TransportCounters counters,
        long id, ILogger log, CancellationToken abort)
    {
        var local = (IPEndPoint)control.Socket.LocalEndPoint!;
        var clientIp = ((IPEndPoint)control.Socket.RemoteEndPoint!).Address;
        byte[] reply = new byte[22];
        IAssociation association;
        try
        {
            using var open = CancellationTokenSource.CreateLinkedTokenSource(abort);
            open.CancelAfter(OpenTimeout);
            association = await UdpCarrier.OpenAsync(factory, id, open.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TransportConnectException or SettingsException or IOException or SocketException || (e is OperationCanceledException && !abort.IsCancellationRequested))
        {
            counters.SessionFailed();
            byte code = e is TransportConnectException t ? (byte)t.Failure : e is OperationCanceledException ? (byte)ConnectFailure.TimedOut : (byte)ConnectFailure.General;
            log.Refused("5", transport, id, code, "UDP ASSOCIATE: " + e.Message);
            int n = Socks5.WriteReply(reply, code);
            try { await control.WriteAsync(reply.AsMemory(0, n), abort).ConfigureAwait(false); } catch (Exception w) when (w is IOException or SocketException or OperationCanceledException) { }
            return;
        }
        using var udp = new Socket(local.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        using var end = CancellationTokenSource.CreateLinkedTokenSource(abort);
        try
        {
            udp.ReceiveBufferSize = SocketBuffer;
            udp.SendBufferSize = SocketBuffer;
            udp.Bind(new IPEndPoint(local.Address, 0));
            int n = Socks5.WriteReply(reply, Socks5.ReplySucceeded, (IPEndPoint)udp.LocalEndPoint!);
            await control.WriteAsync(reply.AsMemory(0, n), abort).ConfigureAwait(false);
            counters.SessionOpened();
            log.LogDebug("SOCKS {Transport} session {Id}: UDP association open", transport, id);
            var state = new State(udp, association, counters, clientIp, expected.Port);
            var up = ClientToPeersAsync(state, end.Token);
            var down = PeersToClientAsync(state, end.Token);
            var closed = ControlClosedAsync(control, end.Token);
            await Task.WhenAny(up, down, closed).ConfigureAwait(false);
            await end.CancelAsync().ConfigureAwait(false);
            udp.Close(); // ends a pending receive at once
            try { await Task.WhenAll(up, down, closed).ConfigureAwait(false); } catch (OperationCanceledException) { }
            counters.SessionClosed();
            log.LogDebug("SOCKS {Transport} session {Id}: UDP association ended", transport, id);
        }
        finally
        {
            await association.DisposeAsync().ConfigureAwait(false);
        }
    }

    private sealed class State(Socket udp, IAssociation association, TransportCounters counters, IPAddress clientIp, int clientPort)
    {
        public readonly Socket Udp = udp;
        public readonly IAssociation Association = association;
        public readonly TransportCounters Counters = counters;
        public readonly IPAddress ClientIp = clientIp;
        public readonly int ClientPort = clientPort; // RFC 1928 §7: DST.PORT of the request, 0 when the client did not know it
        /// <summary>The client's UDP address: its first datagram's source (from the TCP client's IP, and port if it named one).</summary>
        public SocketAddress? Client;
        public readonly object Lock = new();
    }

    /// <summary>RFC 1928 §7: the TCP connection ends the association; anything the client sends on it is ignored.</summary>
    private static async Task ControlClosedAsync(NetworkStream control, CancellationToken ct)
    {
        byte[] sink = ArrayPool<byte>.Shared.Rent(512);
        try
        {
            while (await control.ReadAsync(sink, ct).ConfigureAwait(false) > 0) { }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException) { }
        finally { ArrayPool<byte>.Shared.Return(sink); }
    }

    /// <summary>
    /// Reads the client's datagrams a batch at a time (recvmmsg(2)); a congested carrier makes the loop wait (at most
    /// <see cref="MaxPause"/>) so a burst waits in the socket's buffer instead of being dropped inside the host.
    /// </summary>
    private static async Task ClientToPeersAsync(State s, CancellationToken ct)
    {
        var batch = new DatagramBatchReceiver(ReceiveBatch);
        var from = new SocketAddress(s.Udp.AddressFamily);
        try
        {
            while (!ct.IsCancellationRequested)
            {
                int count = await batch.ReceiveAsync(s.Udp, ct).ConfigureAwait(false);
                // Frames for the association's stream are written when the batch ends (spec/turn.md §5.5); no await inside a batch.
                StreamAssociation.BeginBatch();
                try
                {
                    for (int i = 0; i < count; i++)
                    {
                        batch.Source(i, from);
                        if (!FromClient(s, from))
                        {
                            s.Counters.DatagramDropped();
                            continue;
                        }
                        var datagram = batch.Packet(i);
                        var span = datagram.Span;
                        int n = span.Length;
                        // RSV RSV FRAG ATYP: a fragment (FRAG ≠ 0) is dropped (RFC 1928 §7 lets a server without reassembly do so).
                        if (n < 4 || span[2] != 0 || !TryReadPeer(span, out var peer, out int header))
                        {
                            s.Counters.DatagramDropped();
                            continue;
                        }
                        s.Counters.AddBytesIn(n - header);
                        var pending = s.Association.SendAsync(peer, datagram[header..], ct); // copies before returning (IAssociation)
                        if (!pending.IsCompleted)
                        {
                            StreamAssociation.EndBatch(writeInline: false);
                            try { await pending.AsTask().WaitAsync(MaxPause, ct).ConfigureAwait(false); }
                            catch (TimeoutException) { }
                            StreamAssociation.BeginBatch();
                        }
                    }
                }
                finally
                {
                    StreamAssociation.EndBatch(writeInline: count < batch.Batch);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
    }

    /// <summary>Only the TCP client's address may use the association; the first such datagram fixes its port.</summary>
    private static bool FromClient(State s, SocketAddress from)
    {
        lock (s.Lock)
        {
            if (s.Client is not null) return s.Client.Equals(from);
            var source = PeerAddress.From(from);
            var ip = s.ClientIp.IsIPv4MappedToIPv6 ? s.ClientIp.MapToIPv4() : s.ClientIp;
            if (!source.Unmapped().ToIPAddress().Equals(ip) || (s.ClientPort != 0 && source.Port != s.ClientPort)) return false;
            var copy = new SocketAddress(from.Family, from.Size);
            from.Buffer.Span[..from.Size].CopyTo(copy.Buffer.Span);
            s.Client = copy;
            return true;
        }
    }

    /// <summary>ATYP 01 or 04 and the port; a domain name (03) is refused: the server process judges IP peers only (spec/turn.md §6.1).</summary>
    private static bool TryReadPeer(ReadOnlySpan<byte> d, out PeerAddress peer, out int header)
    {
        peer = default;
        header = 0;
        int length = d[3] switch { Socks5.AtypIPv4 => 4, Socks5.AtypIPv6 => 16, _ => -1 };
        if (length < 0 || d.Length < 4 + length + 2) return false;
        peer = PeerAddress.FromBytes(d.Slice(4, length), BinaryPrimitives.ReadUInt16BigEndian(d[(4 + length)..]));
        header = 4 + length + 2;
        return true;
    }

    /// <summary>Answers go back a batch per sendmmsg(2): while the association has more at hand they join the batch, sent before the loop waits.</summary>
    private static async Task PeersToClientAsync(State s, CancellationToken ct)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ReplyBuffer);
        var send = new DatagramBatchSender(yieldAfterBursts: true); // answers to the application (spec/turn.md §5.4)
        int max = Math.Min(s.Association.MaxDatagramSize, 65536 - MaxHeader), used = 0;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                var receive = s.Association.ReceiveAsync(buffer.AsMemory(used + MaxHeader, max), ct);
                if (!receive.IsCompleted && send.Count > 0)
                {
                    try { await send.FlushAsync(ct).ConfigureAwait(false); }
                    catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { } // the receive below ends too
                }
                var (peer, n) = await receive.ConfigureAwait(false);
                if (n < 0) return; // the server process ended the association
                SocketAddress? client;
                lock (s.Lock) client = s.Client;
                if (client is null) continue; // nobody to send it to yet
                int header = 4 + peer.AddressLength + 2;
                int start = used + MaxHeader - header;
                var h = buffer.AsSpan(start, header);
                h[0] = h[1] = h[2] = 0;
                h[3] = peer.IsIPv4 ? Socks5.AtypIPv4 : Socks5.AtypIPv6;
                peer.WriteAddress(h[4..]);
                BinaryPrimitives.WriteUInt16BigEndian(h[(4 + peer.AddressLength)..], (ushort)peer.Port);
                s.Counters.AddBytesOut(n);
                if (!send.CanAdd(s.Udp, buffer)) await send.FlushAsync(ct).ConfigureAwait(false);
                send.Add(s.Udp, buffer, start, header + n, client);
                used += MaxHeader + n;
                if (buffer.Length - used < MaxHeader + max)
                {
                    await send.FlushAsync(ct).ConfigureAwait(false);
                    used = 0;
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or IOException or SocketException) { }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }
}
