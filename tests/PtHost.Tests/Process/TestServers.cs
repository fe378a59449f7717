using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PtHost.Tests.Process;

/// <summary>A loopback TCP echo server that also records what each connection sent (up to 4 MiB).</summary>
public sealed class EchoServer : IAsyncDisposable
{
    private const int RecordLimit = 4 << 20;
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _loop;

    public EchoServer()
    {
        _listener.Start();
        _loop = Task.Run(LoopAsync);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public int Accepted;

    /// <summary>What each finished connection sent, in order of completion.</summary>
    public System.Collections.Concurrent.ConcurrentQueue<byte[]> Received { get; } = new();

    private async Task LoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            TcpClient c;
            try { c = await _listener.AcceptTcpClientAsync(_cts.Token); }
            catch (Exception) { return; }
            Interlocked.Increment(ref Accepted);
            _ = Task.Run(async () =>
            {
                using (c)
                {
                    var s = c.GetStream();
                    var seen = new MemoryStream();
                    var buffer = new byte[64 * 1024];
                    try
                    {
                        int n;
                        while ((n = await s.ReadAsync(buffer, _cts.Token)) > 0)
                        {
                            if (seen.Length < RecordLimit) seen.Write(buffer, 0, (int)Math.Min(n, RecordLimit - seen.Length));
                            await s.WriteAsync(buffer.AsMemory(0, n), _cts.Token);
                        }
                        c.Client.Shutdown(SocketShutdown.Send);
                    }
                    catch (Exception) { }
                    finally { Received.Enqueue(seen.ToArray()); }
                }
            });
        }
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _listener.Stop();
        await _loop;
    }
}

/// <summary>A minimal HTTP/1.1 server that serves one body at any path, for curl.</summary>
public sealed class HttpFileServer : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _loop;
    private readonly byte[] _body;

    public HttpFileServer(byte[] body)
    {
        _body = body;
        _listener.Start();
        _loop = Task.Run(LoopAsync);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    private async Task LoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            TcpClient c;
            try { c = await _listener.AcceptTcpClientAsync(_cts.Token); }
            catch (Exception) { return; }
            _ = Task.Run(async () =>
            {
                using (c)
                {
                    try
                    {
                        var s = c.GetStream();
                        var head = new StringBuilder();
                        var one = new byte[1];
                        while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal) && head.Length < 8192)
                        {
                            if (await s.ReadAsync(one, _cts.Token) == 0) return;
                            head.Append((char)one[0]);
                        }
                        var header = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {_body.Length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n");
                        await s.WriteAsync(header, _cts.Token);
                        await s.WriteAsync(_body, _cts.Token);
                        c.Client.Shutdown(SocketShutdown.Send);
                        while (await s.ReadAsync(one, _cts.Token) > 0) { }
                    }
                    catch (Exception) { }
                }
            });
        }
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _listener.Stop();
        await _loop;
    }
}
