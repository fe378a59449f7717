using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Hosting;

/// <summary>
/// The Prometheus scrape endpoint (spec/ipc.md §4.12): <c>GET /metrics</c> on its own TCP listener answers the text
/// exposition format 0.0.4 built from <see cref="IMetricsSource"/>s at that moment; anything else gets 404 or 400,
/// then the connection closes. At most <see cref="MaxConnections"/> scrapes at once; a request head must arrive
/// within 5 s and fit 8 KiB. Nothing here touches a session: the sources read their counters.
/// </summary>
internal sealed class MetricsEndpoint : IAsyncDisposable
{
    public const int MaxConnections = 16;
    private const int MaxHead = 8192;
    private static readonly TimeSpan HeadTimeout = TimeSpan.FromSeconds(5);

    private readonly Socket _listener;
    private readonly Func<IEnumerable<IMetricsSource>> _sources;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _slots = new(MaxConnections);
    private Task _accepting = Task.CompletedTask;

    private MetricsEndpoint(Socket listener, Func<IEnumerable<IMetricsSource>> sources, ILogger log)
    {
        _listener = listener;
        _sources = sources;
        _log = log;
    }

    /// <summary>The bound address (port 0 resolved).</summary>
    public IPEndPoint LocalEndPoint => (IPEndPoint)_listener.LocalEndPoint!;

    /// <summary>Binds <paramref name="address"/> and serves. Throws <see cref="SocketException"/> when it cannot be bound.</summary>
    public static MetricsEndpoint Start(IPEndPoint address, Func<IEnumerable<IMetricsSource>> sources, ILogger log)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(address);
            socket.Listen(64);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var endpoint = new MetricsEndpoint(socket, sources, log);
        endpoint._accepting = endpoint.AcceptLoopAsync();
        return endpoint;
    }

    /// <summary>The whole exposition text now.</summary>
    public string Render()
    {
        var metrics = new MetricsWriter();
        foreach (var source in _sources()) source.WriteMetrics(metrics);
        return metrics.ToString();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try { client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
            catch (ObjectDisposedException) { return; }
            catch (SocketException e)
            {
                _log.LogDebug("metrics endpoint: accept failed: {Error}", e.SocketErrorCode);
                continue;
            }
            if (!_slots.Wait(0))
            {
                client.Dispose(); // over the limit: closed at once
                continue;
            }
            _ = ServeAsync(client);
        }
    }

    private async Task ServeAsync(Socket client)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(HeadTimeout);
            byte[] head = new byte[MaxHead];
            int got = 0, end;
            while ((end = IndexOfEnd(head.AsSpan(0, got))) < 0)
            {
                if (got == head.Length)
                {
                    await ReplyAsync(client, "400 Bad Request", "request head too large\n", timeout.Token).ConfigureAwait(false);
                    return;
                }
                int n = await client.ReceiveAsync(head.AsMemory(got), SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (n == 0) return;
                got += n;
            }
            string line = Encoding.ASCII.GetString(head, 0, Math.Max(0, head.AsSpan(0, got).IndexOf((byte)'\r')));
            string[] parts = line.Split(' ');
            if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
                await ReplyAsync(client, "400 Bad Request", "not an HTTP/1.x request\n", timeout.Token).ConfigureAwait(false);
            else if (parts[0] != "GET" && parts[0] != "HEAD")
                await ReplyAsync(client, "405 Method Not Allowed", "GET only\n", timeout.Token).ConfigureAwait(false);
            else if (parts[1] != "/metrics" && !parts[1].StartsWith("/metrics?", StringComparison.Ordinal))
                await ReplyAsync(client, "404 Not Found", "the metrics are at /metrics\n", timeout.Token).ConfigureAwait(false);
            else
                await ReplyAsync(client, "200 OK", Render(), timeout.Token, parts[0] == "HEAD").ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException or IOException)
        {
            _log.LogDebug("metrics endpoint: scrape ended: {Error}", e.Message);
        }
        finally
        {
            client.Dispose();
            _slots.Release();
        }
    }

    private static int IndexOfEnd(ReadOnlySpan<byte> b) => b.IndexOf("\r\n\r\n"u8);

    private static async Task ReplyAsync(Socket client, string status, string body, CancellationToken ct, bool headOnly = false)
    {
        byte[] content = Encoding.UTF8.GetBytes(body);
        string type = status.StartsWith("200", StringComparison.Ordinal) ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8";
        byte[] header = Encoding.ASCII.GetBytes($"HTTP/1.1 {status}\r\nContent-Type: {type}\r\nContent-Length: {content.Length}\r\nConnection: close\r\n\r\n");
        await client.SendAsync(header, SocketFlags.None, ct).ConfigureAwait(false);
        if (!headOnly) await client.SendAsync(content, SocketFlags.None, ct).ConfigureAwait(false);
        client.Shutdown(SocketShutdown.Send);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        try { await _accepting.ConfigureAwait(false); }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { }
        _stop.Dispose();
    }
}
