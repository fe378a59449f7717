using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using PtHost.Net;

namespace PtHost.MicroBenchmarks;

/// <summary>
/// PtHost.Net's copy loop between two loopback TCP connections, in process: a writer sends
/// <see cref="Megabytes"/> MiB into connection A, <see cref="Relay.CopyAsync(Stream, Stream, Action{long}?, CancellationToken)"/>
/// moves them from A to B (splice(2) between two NetworkStreams; pooled 64 KiB buffers when a stream
/// is wrapped), a reader drains B. One operation = one whole transfer on fresh connections.
/// </summary>
[MemoryDiagnoser]
public class RelayBenchmarks
{
    [Params(16)]
    public int Megabytes { get; set; }

    private Socket _listener = null!;
    private byte[] _block = [];
    private readonly byte[] _sink = new byte[256 * 1024];

    [GlobalSetup]
    public void Setup()
    {
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(16);
        _block = new byte[256 * 1024];
        Random.Shared.NextBytes(_block);
    }

    [GlobalCleanup]
    public void Cleanup() => _listener.Dispose();

    private async Task<(Socket Client, Socket Server)> PairAsync()
    {
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var accept = _listener.AcceptAsync();
        await client.ConnectAsync(_listener.LocalEndPoint!);
        return (client, await accept);
    }

    private async Task TransferAsync(bool splice)
    {
        var (writer, relayIn) = await PairAsync();
        var (relayOut, reader) = await PairAsync();
        using (writer)
        using (relayIn)
        using (relayOut)
        using (reader)
        {
            Stream from = new NetworkStream(relayIn, ownsSocket: false), to = new NetworkStream(relayOut, ownsSocket: false);
            if (!splice)
            {
                from = new Opaque(from);
                to = new Opaque(to);
            }
            var copy = Relay.CopyAsync(from, to, null, CancellationToken.None);
            var drain = Task.Run(async () =>
            {
                long total = 0;
                int n;
                while ((n = await reader.ReceiveAsync(_sink, SocketFlags.None)) > 0) total += n;
                return total;
            });
            long bytes = (long)Megabytes << 20;
            for (long sent = 0; sent < bytes; sent += _block.Length) await writer.SendAsync(_block, SocketFlags.None);
            writer.Shutdown(SocketShutdown.Send);
            await copy;
            relayOut.Shutdown(SocketShutdown.Send);
            if (await drain != bytes) throw new InvalidOperationException("bytes lost in the relay");
        }
    }

    [Benchmark(Description = "Relay.CopyAsync, two NetworkStreams (splice)")]
    public Task Splice() => TransferAsync(splice: true);

    [Benchmark(Description = "Relay.CopyAsync, wrapped streams (pooled buffers)")]
    public Task Buffered() => TransferAsync(splice: false);

    /// <summary>Hides the NetworkStream so that the copy loop takes its buffered path.</summary>
    private sealed class Opaque(Stream inner) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => inner.WriteAsync(buffer, cancellationToken);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    }
}
