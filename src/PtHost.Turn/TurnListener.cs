using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Udp;

namespace PtHost.Turn;

/// <summary>
/// One transport's TURN listener in the client process (spec/turn.md §2): UDP and TCP on the same
/// port, one <see cref="TurnServer"/>, and allocations whose relayed side is a UDP association
/// through the transport (native <see cref="IDatagramClientFactory"/>, or framed in its streams).
/// </summary>
public sealed class TurnListener : IAsyncDisposable
{
    public const int BindAttempts = 16;
    /// <summary>SO_RCVBUF and SO_SNDBUF asked for the UDP socket (the kernel grants at most its rmem_max/wmem_max).</summary>
    public const int SocketBufferBytes = 16 << 20;
    private readonly string _transport;
    private readonly TurnOptions _options;
    private readonly ILogger _log;
    private readonly Socket _udp;
    private readonly TcpSessionListener _tcp;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _loops = [];
    private readonly HashSet<TcpTurnClient> _connections = [];
    private readonly Lock _lock = new();
    private long _sessions;

    public TurnListener(string transport, TurnOptions options, IClientFactory factory, ILogger log, TimeProvider? time = null, TransportCounters? counters = null)
    {
        _transport = transport;
        _options = options;
        _log = log;
        if (!UdpCarrier.CanCarry(factory))
            throw new TransportOptionsException($"transport {transport} cannot carry UDP (spec/turn.md §5.1)");
        Server = new TurnServer(options, (id, ct) => OpenSessionAsync(factory, id, ct), log, time, counters);
        var (udp, tcp) = Bind(options.ListenAddress);
        _udp = udp;
        // The limit is the TURN server's (spec/turn.md §4): over it a connection is reset at accept.
        _tcp = new TcpSessionListener($"TURN {transport} tcp", tcp, ServeTcpAsync, log, options.Limits.MaxTcpConnections);
        LocalEndPoint = (IPEndPoint)_udp.LocalEndPoint!;
        var ip = LocalEndPoint.Address;
        Server.PublicAddress = ip.Equals(IPAddress.Any) || ip.Equals(IPAddress.IPv6Any) ? IPAddress.Loopback : ip;
    }

    /// <summary>The bound address (printed as <c>CMETHOD &lt;t&gt; turn &lt;ip:port&gt;</c>).</summary>
    public IPEndPoint LocalEndPoint { get; }

    public TurnServer Server { get; }

    /// <summary>Binds UDP (port 0 picks one), then TCP on the same port; retries when TCP finds it taken.</summary>
    private static (Socket Udp, Socket Tcp) Bind(IPEndPoint address)
    {
        for (int attempt = 0; ; attempt++)
        {
            var udp = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
            try
            {
                udp.Bind(address);
                // Room for bursts while the transport catches up; the kernel caps both at
                // net.core.rmem_max / wmem_max (4 MiB on the reference machine; it doubles what it grants).
                udp.ReceiveBufferSize = SocketBufferBytes;
                udp.SendBufferSize = SocketBufferBytes;
                var tcp = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    tcp.Bind(new IPEndPoint(address.Address, ((IPEndPoint)udp.LocalEndPoint!).Port));
                    tcp.Listen(4096); // a burst up to the connection limit waits in the queue (spec/turn.md §2)
                    return (udp, tcp);
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse && address.Port == 0 && attempt < BindAttempts)
                {
                    tcp.Dispose();
                    udp.Dispose();
                }
                catch
                {
                    tcp.Dispose();
                    throw;
                }
            }
            catch
            {
                udp.Dispose();
                throw;
            }
        }
    }

    public void Start()
    {
        // One thread of its own for the UDP socket (spec/turn.md §2): it blocks in poll(2) and carries each batch to the
        // transport's streams itself, with no hop from the socket engine's epoll thread to the thread pool per batch.
        _loops.Add(OwnThread.Start($"TURN {_transport} udp receive", () => UdpLoop(_stop.Token)));
        _tcp.Start();
        _loops.Add(ExpiryLoopAsync(_stop.Token));
    }

    private ValueTask<IAssociation> OpenSessionAsync(IClientFactory factory, long allocation, CancellationToken ct) =>
        UdpCarrier.OpenAsync(factory, Interlocked.Increment(ref _sessions), ct);

    // ---- UDP ---------------------------------------------------------------------------------

    private sealed class UdpTurnClient(Socket socket, SocketAddress address, PeerAddress remote) : TurnClient(remote)
    {
        public override bool IsStream => false;

        public override void Send(ReadOnlySpan<byte> message)
        {
            try { socket.SendTo(message, SocketFlags.None, address); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }
    }

    /// <summary>How long the UDP loop waits for a congested association before it reads on (its later datagrams may then be dropped there, counted).</summary>
    public static readonly TimeSpan MaxPause = TimeSpan.FromMilliseconds(100);

    /// <summary>How long the receive thread blocks in poll(2) before it looks for a stop.</summary>
    private const int PollTimeoutMs = 200;

    /// <summary>
    /// Reads the UDP socket a batch at a time (poll(2), then recvmmsg(2)) on the listener's own thread; a
    /// datagram whose association is congested makes the loop wait (at most <see cref="MaxPause"/>, blocking
    /// this thread only), so a burst waits in the socket's receive buffer, where the kernel counts what it
    /// drops, instead of being dropped inside the host (spec/turn.md §5.2).
    /// </summary>
    private void UdpLoop(CancellationToken ct)
    {
        var batch = new DatagramBatchReceiver();
        var from = new SocketAddress(_udp.AddressFamily);
        var clients = new Dictionary<PeerAddress, UdpTurnClient>();
        long handled = 0;
        while (!ct.IsCancellationRequested)
        {
            int count = batch.Receive(_udp, PollTimeoutMs);
            if (count < 0) return; // closed
            if (count == 0) continue;
            // Frames for the transport's streams are written when the batch ends (spec/turn.md §5.2).
            StreamAssociation.BeginBatch();
            try
            {
                for (int i = 0; i < count; i++)
                {
                    batch.Source(i, from);
                    var remote = PeerAddress.From(from);
                    // One client object per source address while it has an allocation; a transient one otherwise.
                    if (!clients.TryGetValue(remote, out var client))
                    {
                        var copy = new SocketAddress(from.Family, from.Size);
                        from.Buffer.CopyTo(copy.Buffer);
                        client = new UdpTurnClient(_udp, copy, remote);
                        if (clients.Count > 4 * _options.Limits.MaxAllocations) clients.Clear();
                        clients[remote] = client;
                    }
                    ValueTask pending;
                    try { pending = Server.HandleAsync(client, batch.Packet(i)); }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        _log.MessageThrew(e, _transport, remote);
                        pending = ValueTask.CompletedTask;
                    }
                    // Congested: the wait blocks this thread only (its own).
                    if (!pending.IsCompleted && !StreamAssociation.WaitBetweenBatches(pending, MaxPause, ct)) return;
                    if ((++handled & 0xff) == 0) Prune(clients);
                }
            }
            finally
            {
                // A short batch drained the socket: this thread would only wait, so it writes; after a full one it reads on.
                StreamAssociation.EndBatch(writeInline: count < batch.Batch);
            }
        }
    }

    private void Prune(Dictionary<PeerAddress, UdpTurnClient> clients)
    {
        if (clients.Count < 64) return;
        foreach (var (remote, client) in clients.ToArray())
            if (!Server.HasAllocation(client)) clients.Remove(remote);
    }

    // ---- TCP (RFC 5766 §11 framing) --------------------------------------------------------------

    /// <summary>One TCP client, accepted by the listener's loop (spec/session.md §4).</summary>
    private Task ServeTcpAsync(Socket socket, CancellationToken ct)
    {
        var client = new TcpTurnClient(socket, PeerAddress.From((IPEndPoint)socket.RemoteEndPoint!), DateTimeOffset.UtcNow);
        lock (_lock) _connections.Add(client);
        return ServeTcpAsync(client, ct);
    }

    private async Task ServeTcpAsync(TcpTurnClient client, CancellationToken ct)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(2 * (ushort.MaxValue + Stun.HeaderLength + 4));
        int start = 0, end = 0;
        var writer = client.RunWriterAsync(ct);
        try
        {
            while (!ct.IsCancellationRequested)
            {
                // Split the stream: a STUN message is 20 + length; ChannelData 4 + length, padded to 4 (§11.5).
                while (end - start >= 4)
                {
                    var head = buffer.AsSpan(start, end - start);
                    int length;
                    if ((head[0] & 0xC0) == 0x40) length = Stun.Pad(4 + BinaryPrimitives.ReadUInt16BigEndian(head[2..]));
                    else if ((head[0] & 0xC0) == 0) length = Stun.FrameLength(head);
                    else
                    {
                        _log.NotStun(_transport, client.Remote);
                        return;
                    }
                    if (end - start < length) break;
                    try { Server.Handle(client, buffer.AsMemory(start, length)); }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        _log.MessageThrew(e, _transport, client.Remote);
                    }
                    start += length;
                }
                if (start == end) start = end = 0;
                else if (start > buffer.Length / 2)
                {
                    Buffer.BlockCopy(buffer, start, buffer, 0, end - start);
                    end -= start;
                    start = 0;
                }
                int n = await client.Socket.ReceiveAsync(buffer.AsMemory(end), SocketFlags.None, ct).ConfigureAwait(false);
                if (n == 0)
                {
                    // The client half-closed: answers to what it sent are still written (for at most 5 s) before the close.
                    client.CompleteOutput();
                    try { await writer.WaitAsync(TimeSpan.FromSeconds(5), ct).ConfigureAwait(false); }
                    catch (TimeoutException) { }
                    return;
                }
                end += n;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
        finally
        {
            Server.ClientGone(client);
            client.Close();
            await writer.ConfigureAwait(false);
            lock (_lock) _connections.Remove(client);
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private sealed class TcpTurnClient(Socket socket, PeerAddress remote, DateTimeOffset accepted) : TurnClient(remote)
    {
        private readonly Channel<(byte[] Buffer, int Length)> _out =
            Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(1024) { SingleReader = true });

        public Socket Socket { get; } = socket;
        public DateTimeOffset Accepted { get; } = accepted;
        public override bool IsStream => true;

        public override void Send(ReadOnlySpan<byte> message)
        {
            byte[] copy = ArrayPool<byte>.Shared.Rent(message.Length);
            message.CopyTo(copy);
            if (!_out.Writer.TryWrite((copy, message.Length))) ArrayPool<byte>.Shared.Return(copy);
        }

        public async Task RunWriterAsync(CancellationToken ct)
        {
            byte[] batch = ArrayPool<byte>.Shared.Rent(64 * 1024);
            try
            {
                while (await _out.Reader.WaitToReadAsync(ct).ConfigureAwait(false))
                {
                    int used = 0;
                    while (_out.Reader.TryPeek(out var m) && (used == 0 || used + m.Length <= batch.Length))
                    {
                        _out.Reader.TryRead(out m);
                        if (m.Length > batch.Length - used)
                        {
                            await Socket.SendAsync(m.Buffer.AsMemory(0, m.Length), SocketFlags.None, ct).ConfigureAwait(false);
                            ArrayPool<byte>.Shared.Return(m.Buffer);
                            continue;
                        }
                        Buffer.BlockCopy(m.Buffer, 0, batch, used, m.Length);
                        used += m.Length;
                        ArrayPool<byte>.Shared.Return(m.Buffer);
                    }
                    if (used > 0) await Socket.SendAsync(batch.AsMemory(0, used), SocketFlags.None, ct).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
            finally
            {
                ArrayPool<byte>.Shared.Return(batch);
                while (_out.Reader.TryRead(out var m)) ArrayPool<byte>.Shared.Return(m.Buffer);
            }
        }

        /// <summary>No more messages: the writer ends once it has sent what is queued.</summary>
        public void CompleteOutput() => _out.Writer.TryComplete();

        public void Close()
        {
            _out.Writer.TryComplete();
            Socket.Dispose();
        }
    }

    // ---- lifetimes ---------------------------------------------------------------------------

    private async Task ExpiryLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                Server.Expire();
                var now = DateTimeOffset.UtcNow;
                List<TcpTurnClient> idle;
                lock (_lock) idle = _connections.Where(c => now - c.Accepted > _options.Limits.TcpIdleWithoutAllocation && !Server.HasAllocation(c)).ToList();
                foreach (var c in idle)
                {
                    _log.TcpIdle(_transport, c.Remote, _options.Limits.TcpIdleWithoutAllocation.TotalSeconds);
                    c.Close();
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>Stops accepting and ends every allocation.</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stop.IsCancellationRequested) _stop.Cancel();
        _udp.Dispose();
        var tcp = _tcp.StopAsync(new CancellationToken(true)); // no drain: every connection ends now
        List<TcpTurnClient> open;
        lock (_lock) open = [.. _connections];
        foreach (var c in open) c.Close();
        await Task.WhenAll(_loops.Append(tcp)).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        try { await StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { }
        await _tcp.DisposeAsync().ConfigureAwait(false);
        await Server.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
    }
}
