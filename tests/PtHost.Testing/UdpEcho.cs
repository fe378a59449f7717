using System.Net;
using System.Net.Sockets;

namespace PtHost.Testing;

/// <summary>A UDP echo socket on 127.0.0.1 that counts the datagrams reaching it (the peer behind TURN and ASPORT associations).</summary>
public sealed class UdpEcho : IAsyncDisposable
{
    private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private int _received;

    public UdpEcho()
    {
        _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
        _loop = Task.Run(async () =>
        {
            var buf = new byte[70000];
            var from = new SocketAddress(AddressFamily.InterNetwork);
            while (!_stop.IsCancellationRequested)
            {
                int n;
                try { n = await _socket.ReceiveFromAsync(buf, SocketFlags.None, from, _stop.Token); }
                catch (SocketException) { continue; } // an ICMP error for an earlier datagram
                catch (Exception) { return; }
                Interlocked.Increment(ref _received);
                try { await _socket.SendToAsync(buf.AsMemory(0, n), SocketFlags.None, from, _stop.Token); }
                catch (SocketException) { }
                catch (Exception) { return; }
            }
        });
    }

    public IPEndPoint EndPoint { get; }
    public int Port => EndPoint.Port;

    /// <summary>Datagrams received so far.</summary>
    public int Received => Volatile.Read(ref _received);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _socket.Dispose();
        try { await _loop; } catch (Exception) { }
        _stop.Dispose();
    }
}
