using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PtHost.Tests.Process;

/// <summary>
/// A relay started by systemd with <c>Type=notify</c> (packaging/deb/systemd): <c>NOTIFY_SOCKET</c> names a
/// datagram socket; the relay sends READY=1 only once it listens and STOPPING=1 when it stops, and never
/// READY=1 when it fails to start. The socket here is the test's, as systemd's would be.
/// </summary>
[Collection("process")]
public class SystemdNotifyTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_relay_sends_READY_once_it_listens_and_STOPPING_on_SIGTERM()
    {
        using var notify = new NotifySocket();
        await using var relay = PtProcess.Start(PtHostExecutable.Path, ["relay", "zephyr", "--listen", "127.0.0.1:0"], notify.Environment);
        Assert.Equal("READY=1", await notify.ReceiveAsync(Wait));
        // READY means listening: the LISTEN line is out and the address accepts.
        string listen = await relay.WaitForLineAsync("LISTEN zephyr ");
        using (var tcp = new TcpClient()) await tcp.ConnectAsync(IPEndPoint.Parse(listen.Split(' ')[2]));
        relay.Signal(15);
        Assert.Equal("STOPPING=1", await notify.ReceiveAsync(Wait));
        Assert.Equal(0, await relay.WaitForExitAsync());
        // journald priorities on stderr (the systemd console formatter): "<6>" is informational.
        Assert.Contains("<6>", relay.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_relay_that_cannot_start_never_sends_READY()
    {
        using var notify = new NotifySocket();
        string config = Path.Combine(Directory.CreateTempSubdirectory("pthost-notify-").FullName, "jet.json");
        await File.WriteAllTextAsync(config, "{\"bogus\":1}");
        try
        {
            await using var relay = PtProcess.Start(PtHostExecutable.Path, ["relay", "jet", "--listen", "127.0.0.1:0", "--config", config], notify.Environment);
            Assert.Equal(78, await relay.WaitForExitAsync());
            Assert.Empty(relay.StdoutLines);
            Assert.Null(notify.TryReceiveNow());
        }
        finally { Directory.Delete(Path.GetDirectoryName(config)!, true); }
    }

    [Fact]
    public async Task Without_NOTIFY_SOCKET_logs_keep_the_plain_format()
    {
        await using var relay = PtProcess.Start(PtHostExecutable.Path, ["relay", "zephyr", "--listen", "127.0.0.1:0"], null);
        await relay.WaitForLineAsync("LISTEN zephyr ");
        relay.Signal(15);
        Assert.Equal(0, await relay.WaitForExitAsync());
        Assert.DoesNotContain("<6>", relay.Stderr, StringComparison.Ordinal);
    }

    /// <summary>A bound AF_UNIX datagram socket standing in for systemd's notification socket.</summary>
    internal sealed class NotifySocket : IDisposable
    {
        private readonly string _dir = Directory.CreateTempSubdirectory("pthost-notify-").FullName;
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

        public NotifySocket()
        {
            string path = Path.Combine(_dir, "notify");
            _socket.Bind(new UnixDomainSocketEndPoint(path));
            Environment = new Dictionary<string, string> { ["NOTIFY_SOCKET"] = path };
        }

        public Dictionary<string, string> Environment { get; }

        public async Task<string> ReceiveAsync(TimeSpan timeout)
        {
            using var cts = new CancellationTokenSource(timeout);
            byte[] buffer = new byte[4096];
            int n = await _socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            return Encoding.UTF8.GetString(buffer, 0, n).TrimEnd('\n');
        }

        /// <summary>A datagram already queued, or null (the sender has exited: nothing more can come).</summary>
        public string? TryReceiveNow()
        {
            if (_socket.Available == 0) return null;
            byte[] buffer = new byte[4096];
            int n = _socket.Receive(buffer);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }

        public void Dispose()
        {
            _socket.Dispose();
            Directory.Delete(_dir, true);
        }
    }
}
