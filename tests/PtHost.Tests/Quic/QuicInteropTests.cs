using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Quic;

namespace PtHost.Tests.Quic;

/// <summary>Our QUIC against an independent implementation: Debian's ngtcp2 HTTP/3 examples
/// gtlsserver and gtlsclient (packages ngtcp2-server, ngtcp2-client). Both speak h3; a
/// completed handshake plus the peer's first HTTP/3 control-stream byte is what we check.</summary>
public sealed class QuicInteropTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    /// <summary>gtlsserver lives in /usr/sbin, which a test runner's PATH may lack.</summary>
    private static string? Find(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Append("/usr/sbin").Append("/usr/bin")
            .Select(d => Path.Combine(d, program)).FirstOrDefault(File.Exists);

    private static System.Diagnostics.Process StartTool(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = System.Diagnostics.Process.Start(psi) ?? throw new InvalidOperationException(file + " did not start");
        _ = p.StandardOutput.ReadToEndAsync();
        _ = p.StandardError.ReadToEndAsync();
        return p;
    }

    private static void Stop(System.Diagnostics.Process p)
    {
        try { if (!p.HasExited) p.Kill(); } catch (InvalidOperationException) { }
        p.Dispose();
    }

    [Fact]
    public async Task Our_client_completes_a_handshake_with_gtlsserver()
    {
        var gtlsserver = Find("gtlsserver");
        Assert.True(gtlsserver is not null, "gtlsserver missing: install ngtcp2-server (test.sh does)");
        var dir = Directory.CreateTempSubdirectory("pthost-gtls-").FullName;
        var cert = QuicLoopbackTests.Cert;
        File.WriteAllText(Path.Combine(dir, "cert.pem"), cert.CertificatePem);
        File.WriteAllText(Path.Combine(dir, "key.pem"), cert.PrivateKeyPem);
        Directory.CreateDirectory(Path.Combine(dir, "htdocs"));
        // Port 0: gtlsserver prints nothing, so its port is read from its own UDP socket.
        var server = StartTool(gtlsserver!, "-q", "-d", Path.Combine(dir, "htdocs"), "127.0.0.1", "0",
            Path.Combine(dir, "key.pem"), Path.Combine(dir, "cert.pem"));
        await using var client = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        try
        {
            var bound = await ProcessSockets.WaitUdpSocketAsync(server.Id, Wait);
            Assert.True(bound is not null, "gtlsserver did not bind its UDP socket");
            int port = bound.Port;
            var options = new QuicClientOptions
            {
                Verification = QuicPeerVerification.Pinned(cert.Sha256),
                ApplicationProtocols = ["h3"],
                HandshakeTimeout = TimeSpan.FromSeconds(3),
            };
            // A handshake that fails (3 s) is tried again until the deadline.
            QuicConnection? conn = null;
            var deadline = DateTime.UtcNow + Wait;
            while (conn is null)
            {
                try { conn = await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), options); }
                catch (QuicConnectionException) when (DateTime.UtcNow < deadline) { }
            }
            Assert.Equal("h3", conn.NegotiatedApplicationProtocol);
            // RFC 9114 §6.2.1: the server's control stream starts with stream type 0x00.
            var control = await conn.AcceptStreamAsync().AsTask().WaitAsync(Wait);
            Assert.True(control.IsUnidirectional);
            var first = new byte[1];
            Assert.Equal(1, await control.ReadAsync(first).AsTask().WaitAsync(Wait));
            Assert.Equal(0x00, first[0]);
            await conn.CloseAsync(0x100, "done").WaitAsync(Wait); // H3_NO_ERROR
        }
        finally
        {
            Stop(server);
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Gtlsclient_completes_a_handshake_with_our_server()
    {
        var gtlsclient = Find("gtlsclient");
        Assert.True(gtlsclient is not null, "gtlsclient missing: install ngtcp2-client (test.sh does)");
        var options = new QuicServerOptions { Certificate = QuicLoopbackTests.Cert, ApplicationProtocols = ["h3"] };
        await using var server = QuicEndpoint.CreateServer(new IPEndPoint(IPAddress.Loopback, 0), options);
        var port = server.LocalEndPoint.Port;
        var dir = Directory.CreateTempSubdirectory("pthost-gtlsc-").FullName;
        var client = StartTool(gtlsclient!, "-q", "--exit-on-all-streams-close", "--download=" + dir,
            "127.0.0.1", port.ToString(), $"https://127.0.0.1:{port}/file");
        try
        {
            var conn = await server.AcceptAsync().AsTask().WaitAsync(Wait);
            Assert.Equal("h3", conn.NegotiatedApplicationProtocol);
            // The client's HTTP/3 streams arrive: a request stream and its control stream (type 0x00).
            var sawControl = false;
            for (var i = 0; i < 4 && !sawControl; i++)
            {
                var s = await conn.AcceptStreamAsync().AsTask().WaitAsync(Wait);
                if (!s.IsUnidirectional) continue;
                var first = new byte[1];
                if (await s.ReadAsync(first).AsTask().WaitAsync(Wait) == 1 && first[0] == 0x00) sawControl = true;
            }
            Assert.True(sawControl, "no HTTP/3 control stream from gtlsclient");
            await conn.CloseAsync(0x100, "done").WaitAsync(Wait);
        }
        finally
        {
            Stop(client);
            Directory.Delete(dir, true);
        }
    }
}
