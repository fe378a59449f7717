using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Rud;

/// <summary>The server factory: keys, and <see cref="RudServerManager"/>s.</summary>
internal sealed class RudServer(TransportEnvironment context, RudServerOptions options) : IServerFactory
{
    public const string KeyFile = "rud-key";

    /// <summary>
    /// A fresh server key pair and a fresh client key pair (§12): the server gets its private key and the
    /// client's public key in <c>authorizedKeys</c>, the client the server's public key and its own private key.
    /// </summary>
    public GeneratedConfiguration GenerateConfiguration()
    {
        var key = X25519.GeneratePrivateKey();
        var pub = new byte[X25519.KeySize];
        X25519.PublicKey(key, pub);
        var clientKey = X25519.GeneratePrivateKey();
        var clientPub = new byte[X25519.KeySize];
        X25519.PublicKey(clientKey, clientPub);
        return new(new JObject { ["serverKey"] = Convert.ToBase64String(pub), ["clientKey"] = Convert.ToBase64String(clientKey) },
            new JObject { ["key"] = Convert.ToBase64String(key), ["authorizedKeys"] = new JArray(Convert.ToBase64String(clientPub)) });
    }

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => Start(binding);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => Start(binding);

    private ValueTask<IServerManager> Start(ServerBinding binding)
    {
        var key = options.Key ?? LoadOrCreateStateKey();
        return ValueTask.FromResult<IServerManager>(new RudServerManager(context, options, key, binding));
    }

    /// <summary>The key kept in the state directory (mode 0600), created on first use (§12).</summary>
    private byte[] LoadOrCreateStateKey()
    {
        string path = Path.Combine(context.StateDirectory, KeyFile);
        if (File.Exists(path))
        {
            try
            {
                var k = Convert.FromBase64String(PtHost.Net.PrivateFile.ReadAllText(path).Trim());
                if (k.Length == X25519.KeySize) return k;
            }
            catch (FormatException) { }
            throw new TransportOptionsException($"rud: {path} does not hold a base64 32-byte key");
        }
        var key = X25519.GeneratePrivateKey();
        Directory.CreateDirectory(context.StateDirectory);
        PtHost.Net.PrivateFile.WriteNew(path, Convert.ToBase64String(key));
        return key;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>A running rud server: accepts connections and serves every stream they open (§12).</summary>
internal sealed class RudServerManager : IServerManager
{
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly RudEndpoint _endpoint;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly Task _acceptLoop;
    private readonly ConcurrentDictionary<long, Task> _sessions = new();
    private static long s_ids;

    public RudServerManager(TransportEnvironment context, RudServerOptions options, byte[] key, ServerBinding binding)
    {
        _context = context;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Rud");
        try
        {
            _endpoint = RudEndpoint.Bind(binding.BindAddress, new RudEndpointOptions
            {
                StaticPrivateKey = key, Challenge = options.Challenge, AllowFirstContact = options.FirstContact, AuthorizedKeys = options.AuthorizedKeys,
                CongestionControl = options.Congestion,
            }, _log);
        }
        catch (SocketException e)
        {
            throw new TransportOptionsException($"cannot listen on udp {binding.BindAddress}: {e.SocketErrorCode}", e);
        }
        LocalEndPoint = _endpoint.LocalEndPoint;
        Args = new Dictionary<string, string> { ["key"] = Convert.ToBase64String(_endpoint.StaticPublicKey!) };
        _acceptLoop = AcceptConnectionsAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; }

    internal RudEndpoint Endpoint => _endpoint;

    private async Task AcceptConnectionsAsync()
    {
        try
        {
            while (true)
            {
                var conn = await _endpoint.AcceptConnectionAsync(_stopping.Token).ConfigureAwait(false);
                _log.ConnectionFrom(conn.RemoteEndPoint, conn.Mode, RudOptionText.CongestionName(_endpoint.Options.CongestionControl));
                _ = AcceptStreamsAsync(conn);
                _ = AcceptDatagramStreamsAsync(conn);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
    }

    private async Task AcceptStreamsAsync(RudConnection conn)
    {
        try
        {
            while (true)
            {
                var stream = await conn.AcceptStreamAsync(_stopping.Token).ConfigureAwait(false);
                long id = Interlocked.Increment(ref s_ids);
                var task = ServeAsync(conn, stream);
                _sessions[id] = task;
                _ = task.ContinueWith(_ => _sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
        catch (IOException) { }
    }

    /// <summary>Every datagram stream a client opens is one UDP association (§12.1).</summary>
    private async Task AcceptDatagramStreamsAsync(RudConnection conn)
    {
        try
        {
            while (true)
            {
                var channel = await conn.AcceptDatagramStreamAsync(_stopping.Token).ConfigureAwait(false);
                long id = Interlocked.Increment(ref s_ids);
                var task = _binding.Handler.ServeAssociationAsync(channel, conn.RemoteEndPoint, _abort.Token);
                _sessions[id] = task;
                _ = task.ContinueWith(_ => _sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
        catch (IOException) { }
    }

    /// <summary>Every stream a client opens is one session; the host reads its preamble and serves it (spec/session.md).</summary>
    private Task ServeAsync(RudConnection conn, RudStream stream) => _binding.Handler.ServeAsync(stream, conn.RemoteEndPoint, _abort.Token);

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _acceptLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        _abort.Cancel();
        await _acceptLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (Exception) { }
        await _endpoint.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
        _abort.Dispose();
    }
}
