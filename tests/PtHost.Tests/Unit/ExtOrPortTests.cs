using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using PtHost.Contract;
using PtHost.ExtOrPort;
using PtHost.Net;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

/// <summary>
/// ext-orport-spec §3–§4 from the PT's side. The real proof is the tor bridge test
/// (Process/TorTests); here an in-test relay plays tor's part to reach every failure path.
/// </summary>
public class ExtOrPortTests
{
    [Fact]
    public void The_cookie_file_is_the_32_byte_header_then_the_cookie()
    {
        byte[] cookie = RandomNumberGenerator.GetBytes(32);
        Assert.Equal(cookie, ExtOrPortWire.ParseCookieFile([.. ExtOrPortWire.CookieHeader, .. cookie]));
        Assert.Throws<FormatException>(() => ExtOrPortWire.ParseCookieFile([.. ExtOrPortWire.CookieHeader, .. cookie[..31]]));
        byte[] badHeader = [.. ExtOrPortWire.CookieHeader, .. cookie];
        badHeader[0] = (byte)'?';
        Assert.Throws<FormatException>(() => ExtOrPortWire.ParseCookieFile(badHeader));
    }

    [Fact]
    public void Hashes_are_HMAC_SHA256_of_context_client_nonce_server_nonce()
    {
        byte[] cookie = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        byte[] cn = Enumerable.Repeat((byte)0xC1, 32).ToArray();
        byte[] sn = Enumerable.Repeat((byte)0x5E, 32).ToArray();
        var hash = new byte[32];
        ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ServerHashContext, cn, sn, hash);
        byte[] message = [.. "ExtORPort authentication server-to-client hash"u8, .. cn, .. sn];
        byte[] expected = HMACSHA256.HashData(cookie, message);
        Assert.Equal(expected, hash);
    }

    [Fact]
    public void Command_frames_are_type_length_body_big_endian()
    {
        var frame = new byte[64];
        int n = ExtOrPortWire.WriteCommand(frame, ExtOrPortWire.CmdTransport, "plain"u8);
        Assert.Equal([0x00, 0x02, 0x00, 0x05, .. "plain"u8.ToArray()], frame[..n]);
        var seq = new ReadOnlySequence<byte>([0x10, 0x00, 0x00, 0x00, 0xAA]);
        Assert.Equal(ParseStatus.Done, ExtOrPortWire.TryParseCommand(ref seq, out ushort cmd, out var body));
        Assert.Equal(ExtOrPortWire.ReplyOkay, cmd);
        Assert.True(body.IsEmpty);
        Assert.Equal(1, seq.Length);
        var huge = new ReadOnlySequence<byte>([0x10, 0x00, 0xFF, 0xFF]);
        Assert.Equal(ParseStatus.Invalid, ExtOrPortWire.TryParseCommand(ref huge, out _, out _));
    }

    [Fact]
    public void USERADDR_is_ASCII_address_and_port_with_IPv6_in_brackets()
    {
        Assert.Equal("192.0.2.1:5678", Encoding.ASCII.GetString(ExtOrPortWire.UserAddrBody(new IPEndPoint(IPAddress.Parse("::ffff:192.0.2.1"), 5678))));
        Assert.Equal("[2001:db8::1]:80", Encoding.ASCII.GetString(ExtOrPortWire.UserAddrBody(new IPEndPoint(IPAddress.Parse("2001:db8::1"), 80))));
    }

    [Fact]
    public void The_auth_type_list_ends_with_zero_and_must_offer_SAFE_COOKIE()
    {
        var list = new ReadOnlySequence<byte>([3, 1, 0]);
        Assert.Equal(ParseStatus.Done, ExtOrPortWire.TryParseAuthTypes(ref list, out bool safe));
        Assert.True(safe);
        var open = new ReadOnlySequence<byte>([3, 1]);
        Assert.Equal(ParseStatus.Incomplete, ExtOrPortWire.TryParseAuthTypes(ref open, out _));
        var other = new ReadOnlySequence<byte>([3, 0]);
        Assert.Equal(ParseStatus.Done, ExtOrPortWire.TryParseAuthTypes(ref other, out safe));
        Assert.False(safe);
    }

    [Fact]
    public async Task A_good_handshake_announces_USERADDR_and_TRANSPORT_and_hands_over_the_stream()
    {
        await using var relay = new FakeExtOrPort();
        var client = relay.Client("plain");
        await using var stream = await client.OpenAsync(new IPEndPoint(IPAddress.Parse("192.0.2.9"), 4321), CancellationToken.None);
        var seen = await relay.Sessions.Reader.ReadAsync();
        Assert.Equal("192.0.2.9:4321", seen.UserAddr);
        Assert.Equal("plain", seen.Transport);
        await stream.WriteAsync("VERSIONS"u8.ToArray());
        Assert.Equal("VERSIONS", await seen.FirstBytes);
    }

    [Fact]
    public async Task A_DENY_ends_that_connection_with_a_log_line()
    {
        await using var relay = new FakeExtOrPort { Deny = true };
        var log = new ListLogger<ExtOrPortTests>();
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => relay.Client("plain", log).OpenAsync(null, CancellationToken.None).AsTask());
        Assert.Contains("DENY", e.Message);
        Assert.Contains(log.Entries, l => l.Message.Contains("DENY"));
    }

    [Fact]
    public async Task A_relay_that_does_not_know_the_cookie_is_refused()
    {
        await using var relay = new FakeExtOrPort();
        relay.Cookie = RandomNumberGenerator.GetBytes(32); // the relay's cookie differs from the file's
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => relay.Client("plain").OpenAsync(null, CancellationToken.None).AsTask());
        Assert.Contains("ServerHash", e.Message);
        Assert.Equal(0, relay.CompletedAuthentications);
    }

    [Fact]
    public async Task The_cookie_file_is_read_again_for_every_connection()
    {
        await using var relay = new FakeExtOrPort();
        await using (await relay.Client("plain").OpenAsync(null, CancellationToken.None)) { }
        // tor restarted and wrote a new cookie: the next connection uses it.
        relay.Cookie = RandomNumberGenerator.GetBytes(32);
        relay.WriteCookieFile();
        await using (await relay.Client("plain").OpenAsync(null, CancellationToken.None)) { }
        Assert.Equal(2, relay.CompletedAuthentications);
    }

    [Fact]
    public async Task A_missing_cookie_file_fails_the_connection_not_the_process()
    {
        await using var relay = new FakeExtOrPort();
        File.Delete(relay.CookiePath);
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => relay.Client("plain").OpenAsync(null, CancellationToken.None).AsTask());
        Assert.Contains("cookie file", e.Message);
    }

    [Fact]
    public async Task A_relay_without_SAFE_COOKIE_is_refused()
    {
        await using var relay = new FakeExtOrPort { AuthTypes = [2, 0] };
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => relay.Client("plain").OpenAsync(null, CancellationToken.None).AsTask());
        Assert.Contains("SAFE_COOKIE", e.Message);
    }

    /// <summary>tor's side of ext-orport-spec, enough to drive the client through each path.</summary>
    private sealed class FakeExtOrPort : IAsyncDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accept;
        private readonly string _dir = Directory.CreateTempSubdirectory("extor-").FullName;
        private int _completed;

        public FakeExtOrPort()
        {
            WriteCookieFile();
            _listener.Start();
            _accept = AcceptAsync();
        }

        public byte[] Cookie { get; set; } = RandomNumberGenerator.GetBytes(32);
        public byte[] AuthTypes { get; init; } = [1, 0];
        public bool Deny { get; init; }
        public int CompletedAuthentications => Volatile.Read(ref _completed);
        public string CookiePath => Path.Combine(_dir, "extended_orport_auth_cookie");
        public System.Threading.Channels.Channel<(string? UserAddr, string? Transport, Task<string> FirstBytes)> Sessions { get; } =
            System.Threading.Channels.Channel.CreateUnbounded<(string?, string?, Task<string>)>();

        public void WriteCookieFile() => File.WriteAllBytes(CookiePath, [.. ExtOrPortWire.CookieHeader, .. Cookie]);

        public ExtOrPortClient Client(string transport, Microsoft.Extensions.Logging.ILogger? log = null) =>
            new((IPEndPoint)_listener.LocalEndpoint, CookiePath, transport, new DirectDialer(), log ?? new ListLogger<ExtOrPortTests>());

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    var socket = await _listener.AcceptSocketAsync(_stop.Token);
                    _ = ServeAsync(new NetworkStream(socket, ownsSocket: true));
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        }

        private async Task ServeAsync(NetworkStream s)
        {
            try
            {
                byte[] cookie = Cookie;
                await s.WriteAsync(AuthTypes);
                var chosenAndNonce = new byte[33];
                await s.ReadExactlyAsync(chosenAndNonce);
                byte[] cn = chosenAndNonce[1..];
                byte[] sn = RandomNumberGenerator.GetBytes(32);
                var serverHash = new byte[32];
                ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ServerHashContext, cn, sn, serverHash);
                await s.WriteAsync((byte[])[.. serverHash, .. sn]);
                var clientHash = new byte[32];
                await s.ReadExactlyAsync(clientHash);
                var expected = new byte[32];
                ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ClientHashContext, cn, sn, expected);
                bool ok = expected.AsSpan().SequenceEqual(clientHash);
                await s.WriteAsync(new[] { (byte)(ok ? 1 : 0) });
                if (!ok) return;
                Interlocked.Increment(ref _completed);
                string? userAddr = null, transport = null;
                var header = new byte[4];
                while (true)
                {
                    await s.ReadExactlyAsync(header);
                    int cmd = header[0] << 8 | header[1], len = header[2] << 8 | header[3];
                    var body = new byte[len];
                    await s.ReadExactlyAsync(body);
                    if (cmd == ExtOrPortWire.CmdUserAddr) userAddr = Encoding.ASCII.GetString(body);
                    else if (cmd == ExtOrPortWire.CmdTransport) transport = Encoding.ASCII.GetString(body);
                    else if (cmd == ExtOrPortWire.CmdDone) break;
                }
                await s.WriteAsync(new byte[] { 0x10, (byte)(Deny ? 0x01 : 0x00), 0, 0 });
                var first = new TaskCompletionSource<string>();
                Sessions.Writer.TryWrite((userAddr, transport, first.Task));
                var buf = new byte[8];
                int n = await s.ReadAtLeastAsync(buf, 8, throwOnEndOfStream: false);
                first.TrySetResult(Encoding.ASCII.GetString(buf, 0, n));
            }
            catch (Exception e) when (e is IOException or EndOfStreamException or ObjectDisposedException) { }
            finally { await s.DisposeAsync(); }
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            _listener.Stop();
            await _accept;
            Directory.Delete(_dir, true);
        }
    }
}
