using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PtHost.Testing;

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
