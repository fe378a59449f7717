using System.Net;
using System.Net.Sockets;

namespace PtHost.Testing;

/// <summary>A loopback TCP server that runs a script for each accepted connection (the far end of a session).</summary>
public sealed class ScriptServer : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _cts = new();
    private readonly Func<Socket, CancellationToken, Task> _script;
    private readonly Task _loop;
    private readonly List<Task> _sessions = [];
    private int _accepted;
    private int _finished;

    public ScriptServer(Func<Socket, CancellationToken, Task> script)
    {
        _script = script;
        _listener.Start(4096);
        _loop = Task.Run(LoopAsync);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public int Accepted => Volatile.Read(ref _accepted);
    public int Finished => Volatile.Read(ref _finished);

    /// <summary>Exceptions the scripts threw (other than cancellation at dispose).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<Exception> Errors { get; } = new();

    private async Task LoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptSocketAsync(_cts.Token); }
            catch (Exception) { return; }
            Interlocked.Increment(ref _accepted);
            var t = Task.Run(async () =>
            {
                try { await _script(s, _cts.Token); }
                catch (OperationCanceledException) when (_cts.IsCancellationRequested) { }
                catch (Exception e) { Errors.Enqueue(e); }
                finally
                {
                    s.Dispose();
                    Interlocked.Increment(ref _finished);
                }
            });
            lock (_sessions) _sessions.Add(t);
        }
    }

    /// <summary>Waits until <paramref name="n"/> connections have finished their script.</summary>
    public Task<bool> WaitFinishedAsync(int n, TimeSpan within) => Eventually.HoldsWithinAsync(() => Finished >= n, within);

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _listener.Stop();
        await _loop;
        Task[] all;
        lock (_sessions) all = [.. _sessions];
        await Task.WhenAll(all).WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { });
    }

    /// <summary>Reads until EOF (or reset, or cancellation); returns the byte count.</summary>
    public static async Task<long> DrainAsync(Socket s, CancellationToken ct)
    {
        var buf = new byte[64 * 1024];
        long total = 0;
        try
        {
            int n;
            while ((n = await s.ReceiveAsync(buf, SocketFlags.None, ct)) > 0) total += n;
        }
        catch (SocketException) { }
        return total;
    }
}
