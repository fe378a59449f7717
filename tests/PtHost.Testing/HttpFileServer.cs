using System.Net.Sockets;
using System.Text;

namespace PtHost.Testing;

/// <summary>A minimal HTTP/1.1 server that serves one body at any path, for curl.</summary>
public sealed class HttpFileServer : IAsyncDisposable
{
    private readonly ScriptServer _server;

    public HttpFileServer(byte[] body) => _server = new ScriptServer((s, ct) => ServeAsync(s, body, ct));

    public int Port => _server.Port;

    /// <summary>Connections accepted so far.</summary>
    public int Accepted => _server.Accepted;

    private static async Task ServeAsync(Socket socket, byte[] body, CancellationToken ct)
    {
        using var s = new NetworkStream(socket, ownsSocket: false);
        var head = new StringBuilder();
        var one = new byte[1];
        while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal) && head.Length < 8192)
        {
            if (await s.ReadAsync(one, ct) == 0) return;
            head.Append((char)one[0]);
        }
        var header = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n");
        await s.WriteAsync(header, ct);
        await s.WriteAsync(body, ct);
        socket.Shutdown(SocketShutdown.Send);
        while (await s.ReadAsync(one, ct) > 0) { }
    }

    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
