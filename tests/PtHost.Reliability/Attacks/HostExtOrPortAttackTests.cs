using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.ExtOrPort;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, point 9: the ExtORPort client (spec/ipc.md §10.4) accepts reply bodies of up to 4,096 bytes (its
/// parser's limit, <see cref="ExtOrPortWire.MaxBodyLength"/>) but read them into a 1,024-byte buffer. A relay (or
/// whoever holds its port) that sends a CONTROL reply of 1,025–4,096 bytes before OKAY therefore broke every session.
/// Here a scripted ExtORPort peer, after a correct SAFE_COOKIE handshake, sends a CONTROL body of exactly 4,096 bytes,
/// then OKAY, then echoes: the session must carry its bytes. A body of 4,097 bytes is refused and costs that session
/// only: the next session (4,096 again) works.
/// </summary>
public class HostExtOrPortAttackTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_4096_byte_control_reply_from_the_ExtORPort_is_read_and_the_session_carries_its_bytes()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-extor-").FullName;
        try
        {
            byte[] cookie = RandomNumberGenerator.GetBytes(ExtOrPortWire.CookieLength);
            string cookieFile = Path.Combine(dir, "cookie");
            await File.WriteAllBytesAsync(cookieFile, [.. ExtOrPortWire.CookieHeader, .. cookie]);
            int next = 0;
            int[] bodies = [ExtOrPortWire.MaxBodyLength, ExtOrPortWire.MaxBodyLength + 1, ExtOrPortWire.MaxBodyLength];
            await using var orPort = new ScriptServer(async (s, ct) =>
            {
                int body = bodies[Interlocked.Increment(ref next) - 1];
                await ServeAsync(s, cookie, body, ct);
            });
            var env = new Dictionary<string, string>
            {
                ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
                ["TOR_PT_STATE_LOCATION"] = Path.Combine(dir, "state"),
                ["TOR_PT_SERVER_TRANSPORTS"] = "plain",
                ["TOR_PT_SERVER_BINDADDR"] = "plain-127.0.0.1:0",
                ["TOR_PT_ORPORT"] = "127.0.0.1:9",
                ["TOR_PT_EXTENDED_SERVER_PORT"] = $"127.0.0.1:{orPort.Port}",
                ["TOR_PT_AUTH_COOKIE_FILE"] = cookieFile,
                ["TOR_PT_EXIT_ON_STDIN_CLOSE"] = "1",
            };
            await using var server = PtProcess.Start(PtHostExecutable.Path, [], env);
            var serverEp = IPEndPoint.Parse((await server.ReadUntilDoneAsync()).Single(l => l.StartsWith("SMETHOD plain", StringComparison.Ordinal)).Split(' ')[2]);
            await using var client = PtProcess.StartPthost("""{"role":"client","transports":["plain"],"exit-on-stdin-close":true}""");
            var socksEp = IPEndPoint.Parse((await client.ReadUntilDoneAsync()).Single(l => l.StartsWith("CMETHOD plain socks5", StringComparison.Ordinal)).Split(' ')[3]);

            var results = new List<string>();
            for (int i = 0; i < bodies.Length; i++)
            {
                byte[] data = RandomNumberGenerator.GetBytes(64 * 1024);
                await using var socks = await SocksClient.ConnectAsync(socksEp);
                await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(serverEp.Address, serverEp.Port)]);
                Assert.Equal([5, 0], await socks.ReadExactlyAsync(2));
                byte reply = await socks.ReadReplyAsync();
                if (bodies[i] > ExtOrPortWire.MaxBodyLength)
                {
                    // Over the parser's limit: the server ends the session before it is established (spec/ipc.md §10.4).
                    results.Add($"CONTROL body {bodies[i]}: SOCKS reply {reply:x2}");
                    output.WriteLine(results[^1]);
                    Assert.NotEqual(0x00, reply);
                    continue;
                }
                Assert.Equal(0x00, reply);
                await socks.SendAsync(data);
                socks.Socket.Shutdown(SocketShutdown.Send);
                byte[] back;
                using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
                {
                    try { back = await Support.Sessions.ReadAllAsync(socks.Socket, cts.Token); }
                    catch (Exception e) when (e is SocketException or IOException) { back = []; } // a reset
                }
                results.Add($"CONTROL body {bodies[i]}: {back.Length} of {data.Length} bytes echoed{(back.AsSpan().SequenceEqual(data) ? " intact" : "")}");
                output.WriteLine(results[^1]);
                Assert.True(back.AsSpan().SequenceEqual(data), string.Join("; ", results) + "\nserver stderr:\n" + server.Stderr);
            }
            Assert.Contains("reply body of 4097 bytes", server.Stderr);
            Assert.DoesNotContain("ArgumentOutOfRange", server.Stderr);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>A relay's ExtORPort side (ext-orport-spec §3–§4): SAFE_COOKIE, then a CONTROL reply of <paramref name="controlBody"/> bytes, OKAY, and an echo.</summary>
    private static async Task ServeAsync(Socket s, byte[] cookie, int controlBody, CancellationToken ct)
    {
        await s.SendAsync(new byte[] { ExtOrPortWire.AuthSafeCookie, ExtOrPortWire.AuthListEnd }, SocketFlags.None, ct);
        byte[] hello = await ReadAsync(s, 1 + ExtOrPortWire.NonceLength, ct);
        Assert.Equal(ExtOrPortWire.AuthSafeCookie, hello[0]);
        byte[] clientNonce = hello[1..];
        byte[] serverNonce = RandomNumberGenerator.GetBytes(ExtOrPortWire.NonceLength);
        byte[] serverHash = new byte[ExtOrPortWire.HashLength];
        ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ServerHashContext, clientNonce, serverNonce, serverHash);
        await s.SendAsync((byte[])[.. serverHash, .. serverNonce], SocketFlags.None, ct);
        byte[] clientHash = await ReadAsync(s, ExtOrPortWire.HashLength, ct);
        byte[] expected = new byte[ExtOrPortWire.HashLength];
        ExtOrPortWire.ComputeHash(cookie, ExtOrPortWire.ClientHashContext, clientNonce, serverNonce, expected);
        Assert.Equal(expected, clientHash);
        await s.SendAsync(new byte[] { 1 }, SocketFlags.None, ct);
        // USERADDR, TRANSPORT, DONE.
        while (true)
        {
            byte[] header = await ReadAsync(s, 4, ct);
            int length = header[2] << 8 | header[3];
            if (length > 0) await ReadAsync(s, length, ct);
            if ((header[0] << 8 | header[1]) == ExtOrPortWire.CmdDone) break;
        }
        byte[] control = new byte[4 + controlBody];
        control[0] = ExtOrPortWire.ReplyControl >> 8;
        control[1] = ExtOrPortWire.ReplyControl & 0xFF;
        control[2] = (byte)(controlBody >> 8);
        control[3] = (byte)controlBody;
        RandomNumberGenerator.Fill(control.AsSpan(4));
        await s.SendAsync((byte[])[.. control, ExtOrPortWire.ReplyOkay >> 8, ExtOrPortWire.ReplyOkay & 0xFF, 0, 0], SocketFlags.None, ct);
        var buffer = new byte[16384];
        int n;
        try
        {
            while ((n = await s.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0) await s.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException) { } // the 4,097-byte case: pthost closed the connection
    }

    private static async Task<byte[]> ReadAsync(Socket s, int count, CancellationToken ct)
    {
        var b = new byte[count];
        int got = 0;
        while (got < count)
        {
            int n = await s.ReceiveAsync(b.AsMemory(got), SocketFlags.None, ct);
            if (n == 0) throw new EndOfStreamException();
            got += n;
        }
        return b;
    }
}
