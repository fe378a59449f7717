using System.Net;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Udp;

namespace PtHost.Embedded;

/// <summary>One session a server transport accepted: the application's end of it, and what the client asked for.</summary>
/// <param name="Stream">The transport's own stream after the session preamble and its reply (counted in the
/// transport's statistics); disposing it ends the session.</param>
/// <param name="Destination">The destination the client named (spec/session.md §2); null when it named none.</param>
/// <param name="Remote">The transport-level peer (client process or relay).</param>
public sealed record EmbeddedSession(Stream Stream, Destination? Destination, EndPoint? Remote);

/// <summary>
/// PtHost's server side inside the application (spec/adapters.md §5.8): one transport whose accepted sessions
/// are handed to the application as streams (<see cref="AcceptAsync"/>) instead of being dialled onward.
/// </summary>
public sealed class EmbeddedServer : EmbeddedInstance
{
    private const int AcceptQueue = 512;
    private readonly Channel<EmbeddedSession> _accepted = Channel.CreateBounded<EmbeddedSession>(
        new BoundedChannelOptions(AcceptQueue) { FullMode = BoundedChannelFullMode.Wait });
    private readonly CancellationTokenSource _stopping = new();
    private string[] _transports = [];
    private IServerManager? _manager;

    private EmbeddedServer(JObject config, ILoggerFactory? loggers) : base(server: true, config, loggers) { }

    public override IReadOnlyList<string> Transports => _transports;

    /// <summary>The address the transport reports (what pthost's SMETHOD line carries).</summary>
    public IPEndPoint EndPoint => _manager!.LocalEndPoint;

    /// <summary>The SMETHOD line's <c>ARGS:</c> (e.g. zephyr's <c>pin</c>).</summary>
    public IReadOnlyDictionary<string, string> Args => _manager!.Args;

    /// <summary>
    /// Starts <paramref name="transport"/>'s server with <paramref name="options"/> (<c>options.&lt;t&gt;</c>) listening at
    /// <paramref name="bindAddress"/> (default 127.0.0.1:0). Sessions of every destination are accepted: the
    /// application decides what to do with each (it is its own target).
    /// </summary>
    public static Task<EmbeddedServer> StartAsync(string transport, JObject? options, IPEndPoint? bindAddress = null,
        string? state = null, ILoggerFactory? loggers = null, CancellationToken ct = default) =>
        StartCoreAsync(transport, options, null, bindAddress, state, loggers, ct);

    /// <summary>
    /// Starts <paramref name="transport"/>'s server bound to <paramref name="target"/> (pthost's <c>listen</c> with a
    /// <c>target</c>, spec/ipc.md §3.6): every session, and every UDP association, goes to the target as in a pthost
    /// server process, and the application sees none (<see cref="AcceptAsync"/> refuses). A target that does not
    /// answer fails that session only, with the SOCKS reply pthost would send.
    /// </summary>
    public static Task<EmbeddedServer> ListenAsync(string transport, JObject? options, Destination target, IPEndPoint? bindAddress = null,
        string? state = null, ILoggerFactory? loggers = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(target);
        return StartCoreAsync(transport, options, target, bindAddress, state, loggers, ct);
    }

    private static async Task<EmbeddedServer> StartCoreAsync(string transport, JObject? options, Destination? target, IPEndPoint? bindAddress,
        string? state, ILoggerFactory? loggers, CancellationToken ct)
    {
        var config = new JObject { ["options"] = new JObject { [transport] = options } };
        if (state is not null) config["state"] = state;
        var server = new EmbeddedServer(config, loggers) { Target = target };
        try
        {
            var counters = new TransportCounters();
            var factory = Create(transport).CreateServerFactory(server.Environment(transport, counters));
            server.Owned.Add(factory);
            var log = server.Loggers.CreateLogger("PtHost.Sessions");
            var bind = bindAddress ?? new IPEndPoint(IPAddress.Loopback, 0);
            if (target is null)
            {
                // A free server: the session's destination is the application's to read, not a host to dial.
                var sessions = new InboundSessions(transport, server.DeliverAsync, counters, log);
                server._manager = await factory.ProxyAsync(new ServerBinding(bind, null, sessions), ct).ConfigureAwait(false);
            }
            else
            {
                // Bound: the executable's onward path (spec/ipc.md §3.6), streams and UDP associations to the target.
                server._accepted.Writer.TryComplete();
                var dialer = new DirectDialer();
                var associations = new ServerAssociations(target, null, server.Loggers.CreateLogger("PtHost.Turn"));
                var sessions = new InboundSessions(transport, (_, _, c) => dialer.ConnectTcpAsync(target, c), associations, counters, log);
                server._manager = await factory.ListenAsync(new ServerBinding(bind, target, sessions), ct).ConfigureAwait(false);
            }
            server.Owned.Add(server._manager);
            server._transports = [transport];
            return server;
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The bound target (<see cref="ListenAsync"/>), or null for a server whose sessions go to the application.</summary>
    public Destination? Target { get; private init; }

    /// <summary>
    /// One session for the application (InboundSessions has replied): the transport's own stream, counted, with no
    /// onward connection, relay or in-memory pipe between the transport and the application.
    /// </summary>
    private async ValueTask DeliverAsync(Stream session, Destination? destination, EndPoint? remote, CancellationToken ct)
    {
        try
        {
            await _accepted.Writer.WriteAsync(new EmbeddedSession(session, destination, remote), ct).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new TransportConnectException(ConnectFailure.General, "the in-process server is stopping");
        }
    }

    /// <summary>The next accepted session; ends (<see cref="ChannelClosedException"/>) once the server is disposed.</summary>
    public ValueTask<EmbeddedSession> AcceptAsync(CancellationToken ct = default) => Target is null
        ? _accepted.Reader.ReadAsync(ct)
        : throw new InvalidOperationException($"this server is bound to {Target}: its sessions go there, not to the application");

    private int _disposed;

    /// <summary>Stops the transport (sessions in progress get up to 5 s) and ends <see cref="AcceptAsync"/>; a second call does nothing.</summary>
    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _accepted.Writer.TryComplete();
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_manager is not null) await _manager.StopAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5)).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }
}
