using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using PtHost.Net.Tls;

// Sequential TLS 1.3 handshakes over loopback between one client configuration and one server configuration
// (the same SslStreamCertificateContext each time, as a zephyr/jet factory holds them), in several variants.
// A handshake counts as resumed when the ClientHello offers pre_shared_key (extension 41, RFC 8446 §4.2.11)
// and the ServerHello selects it; both are read from the bytes on the wire (the first flight each way).
// Usage: PtHost.TlsProbe [handshakes per variant, default 50] [keylog]
// "keylog" sets the System.Net.EnableSslKeyLogging switch, so that SSLKEYLOGFILE (when set) receives the traffic
// secrets: the only route .NET offers to them (docs/benchmarks.md, "kTLS").
if (args.Length > 1 && args[1] == "keylog") AppContext.SetSwitch("System.Net.EnableSslKeyLogging", true);
int count = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 50;
using var serverCert = PinnedTls.Generate("probe server");
using var clientCert = PinnedTls.Generate("probe client");
var serverContext = SslStreamCertificateContext.Create(serverCert, null, offline: true);
var clientContext = SslStreamCertificateContext.Create(clientCert, null, offline: true);
byte[] serverPin = PinnedTls.Pin(serverCert), clientPin = PinnedTls.Pin(clientCert);

var variants = new (string Name, Func<SslClientAuthenticationOptions> Client, Func<SslServerAuthenticationOptions> Server)[]
{
    ("PinnedTls as zephyr/jet use it (TargetHost \"\", certificates both ways)",
        () => PinnedTls.ClientOptions(clientContext, serverPin), () => PinnedTls.ServerOptions(serverContext, [clientPin])),
    ("PinnedTls with TargetHost \"zephyr\" (certificates both ways)",
        () => WithHost(PinnedTls.ClientOptions(clientContext, serverPin)), () => PinnedTls.ServerOptions(serverContext, [clientPin])),
    ("control: TargetHost \"zephyr\", server certificate only (no client certificate)",
        () => WithoutClientCert(WithHost(PinnedTls.ClientOptions(clientContext, serverPin))), () => WithoutClientAuth(PinnedTls.ServerOptions(serverContext, [clientPin]))),
};

using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
listener.Listen(16);
var endPoint = (IPEndPoint)listener.LocalEndPoint!;
Console.WriteLine($"{count} sequential handshakes per variant, TLS 1.3, loopback; .NET {Environment.Version}");
foreach (var (name, client, server) in variants)
{
    int offered = 0, accepted = 0, clientChecks = 0, serverChecks = 0, resumedWithCertificates = 0;
    string suite = "";
    var times = new List<double>();
    var cpu = TimeSpan.Zero;
    long serverBytes = 0, serverBytesResumed = 0;
    for (int i = 0; i < count; i++)
    {
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        using var c = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var accept = listener.AcceptAsync();
        await c.ConnectAsync(endPoint).ConfigureAwait(false);
        using var s = await accept.ConfigureAwait(false);
        s.NoDelay = true;
        var clientWire = new Recording(new NetworkStream(c, ownsSocket: false));
        var serverWire = new Recording(new NetworkStream(s, ownsSocket: false));
        await using var clientTls = new SslStream(clientWire);
        await using var serverTls = new SslStream(serverWire);
        var clientOptions = client();
        var serverOptions = server();
        var clientCheck = clientOptions.RemoteCertificateValidationCallback;
        var serverCheck = serverOptions.RemoteCertificateValidationCallback;
        // Counts the pin checks: does a resumed handshake still run them?
        clientOptions.RemoteCertificateValidationCallback = (o, cert, chain, errors) => { clientChecks++; return clientCheck!(o, cert, chain, errors); };
        if (serverCheck is not null)
            serverOptions.RemoteCertificateValidationCallback = (o, cert, chain, errors) => { serverChecks++; return serverCheck(o, cert, chain, errors); };
        await Task.WhenAll(
            clientTls.AuthenticateAsClientAsync(clientOptions),
            serverTls.AuthenticateAsServerAsync(serverOptions)).ConfigureAwait(false);
        suite = clientTls.NegotiatedCipherSuite.ToString();
        // One byte each way: the server's NewSessionTicket (sent after the handshake) reaches the client.
        await serverTls.WriteAsync(new byte[] { 1 }).ConfigureAwait(false);
        await clientTls.ReadExactlyAsync(new byte[1]).ConfigureAwait(false);
        await clientTls.WriteAsync(new byte[] { 2 }).ConfigureAwait(false);
        await serverTls.ReadExactlyAsync(new byte[1]).ConfigureAwait(false);
        clock.Stop();
        cpu += Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
        if (i > 0) times.Add(clock.Elapsed.TotalMilliseconds);
        bool o = Hello.HasExtension(clientWire.First(), Hello.ClientHello, 41);
        bool a = Hello.HasExtension(serverWire.First(), Hello.ServerHello, 41);
        if (o) offered++;
        if (a)
        {
            accepted++;
            serverBytesResumed += serverWire.HandshakeBytes;
            if (clientTls.RemoteCertificate is not null && (serverOptions.ClientCertificateRequired == false || serverTls.RemoteCertificate is not null)) resumedWithCertificates++;
        }
        else serverBytes += serverWire.HandshakeBytes;
        if (clientTls.SslProtocol != SslProtocols.Tls13) throw new InvalidOperationException("not TLS 1.3");
    }
    times.Sort();
    Console.WriteLine($"{name}: {suite}");
    Console.WriteLine($"  pin checks: client {clientChecks}, server {serverChecks}; resumed handshakes with the peer certificates still visible: {resumedWithCertificates}/{accepted}");
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"  ClientHello with pre_shared_key: {offered}/{count}; ServerHello selecting it: {accepted}/{count}; " +
        $"handshake + 1 byte each way p50 {times[times.Count / 2]:0.00} ms; CPU (both sides, one process) {cpu.TotalMilliseconds / count:0.00} ms per handshake; " +
        $"server's first flight {(count - accepted > 0 ? serverBytes / (count - accepted) : 0)} B full / {(accepted > 0 ? serverBytesResumed / accepted : 0)} B resumed"));
}
return 0;

static SslClientAuthenticationOptions WithHost(SslClientAuthenticationOptions o) { o.TargetHost = "zephyr"; return o; }
static SslClientAuthenticationOptions WithoutClientCert(SslClientAuthenticationOptions o) { o.ClientCertificateContext = null; return o; }
static SslServerAuthenticationOptions WithoutClientAuth(SslServerAuthenticationOptions o) { o.ClientCertificateRequired = false; o.RemoteCertificateValidationCallback = null; return o; }

/// <summary>Passes bytes through and keeps the first write (the first flight) and the bytes written before the first read completes after it.</summary>
internal sealed class Recording(Stream inner) : Stream
{
    private byte[]? _first;
    public long HandshakeBytes { get; private set; }
    public byte[] First() => _first ?? [];
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() => inner.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
    public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => inner.ReadAsync(buffer, offset, count, cancellationToken);
    public override void Write(byte[] buffer, int offset, int count) { Note(buffer.AsSpan(offset, count)); inner.Write(buffer, offset, count); }
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) { Note(buffer.Span); return inner.WriteAsync(buffer, cancellationToken); }
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) { Note(buffer.AsSpan(offset, count)); return inner.WriteAsync(buffer, offset, count, cancellationToken); }
    private void Note(ReadOnlySpan<byte> data) { _first ??= data.ToArray(); if (HandshakeBytes == 0) HandshakeBytes = data.Length; }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    protected override void Dispose(bool disposing) { if (disposing) inner.Dispose(); base.Dispose(disposing); }
}

/// <summary>RFC 8446 §4.1.2/§4.1.3: finds an extension in the ClientHello or ServerHello at the start of a TLS record.</summary>
internal static class Hello
{
    public const byte ClientHello = 1, ServerHello = 2;

    public static bool HasExtension(ReadOnlySpan<byte> record, byte type, ushort extension)
    {
        if (record.Length < 9 || record[0] != 22 || record[5] != type) return false;
        var p = record[9..];
        p = p[(2 + 32)..]; // legacy_version, random
        p = p[(1 + p[0])..]; // legacy_session_id
        if (type == ClientHello)
        {
            p = p[(2 + (p[0] << 8 | p[1]))..]; // cipher_suites
            p = p[(1 + p[0])..]; // legacy_compression_methods
        }
        else p = p[3..]; // cipher_suite, legacy_compression_method
        int total = p[0] << 8 | p[1];
        p = p.Slice(2, Math.Min(total, p.Length - 2));
        while (p.Length >= 4)
        {
            int t = p[0] << 8 | p[1], len = p[2] << 8 | p[3];
            if (t == extension) return true;
            p = p[Math.Min(4 + len, p.Length)..];
        }
        return false;
    }
}
