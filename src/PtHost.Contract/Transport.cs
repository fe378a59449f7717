using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>
/// A pluggable transport, registered by <see cref="Name"/> (PT 2.0 §3.2). The host owns
/// listeners, SOCKS, TURN and the IPC; a transport only turns sessions into connections.
/// Implementations need a public parameterless constructor to be found in a plugin assembly.
/// </summary>
public interface IPluggableTransport
{
    /// <summary>The name used in <c>transports</c>, CMETHOD and SMETHOD lines: [A-Za-z0-9_]+.</summary>
    string Name { get; }

    /// <summary>
    /// Creates the client side. Options are parsed and validated here, once: a bad option throws
    /// <see cref="TransportOptionsException"/> and the host reports CMETHOD-ERROR at start-up.
    /// </summary>
    IClientFactory CreateClientFactory(TransportEnvironment context);

    /// <summary>
    /// Creates the server side. <see cref="TransportEnvironment.Options"/> may be null: a factory without
    /// options must still be able to <see cref="IServerFactory.GenerateConfiguration"/>; options a
    /// listener needs are then checked by Listen/Proxy, still before SMETHODS DONE.
    /// </summary>
    IServerFactory CreateServerFactory(TransportEnvironment context);
}

/// <summary>What the host hands a transport factory.</summary>
public sealed class TransportEnvironment
{
    /// <summary>Creates a context.</summary>
    public TransportEnvironment(string name, JToken? options, string stateDirectory, ISignalChannel signals,
        INetworkDialer dialer, ILoggerFactory loggerFactory, TransportCounters counters)
    {
        Name = name;
        Options = options;
        StateDirectory = stateDirectory;
        Signals = signals;
        Dialer = dialer;
        LoggerFactory = loggerFactory;
        Counters = counters;
    }

    /// <summary>The transport's registered name.</summary>
    public string Name { get; }

    /// <summary>The opaque JSON from the configuration's <c>options[name]</c>; null when absent.</summary>
    public JToken? Options { get; }

    /// <summary>The transport's own state directory (<c>&lt;state&gt;/&lt;name&gt;</c>, created by the host). Write nowhere else.</summary>
    public string StateDirectory { get; }

    /// <summary>Out-of-band messages to and from the peer process (CMESSAGE/SMESSAGE lines).</summary>
    public ISignalChannel Signals { get; }

    /// <summary>Outgoing network connections; applies the host's upstream proxy and bind-address policy.</summary>
    public INetworkDialer Dialer { get; }

    /// <summary>Logging (to stderr; never to stdout).</summary>
    public ILoggerFactory LoggerFactory { get; }

    /// <summary>Counters the host reports in STATUS lines; the host counts sessions and bytes, a transport may add its own.</summary>
    public TransportCounters Counters { get; }
}

/// <summary>Client side of a transport: turns a SOCKS/TURN session into a connection to the server process.</summary>
public interface IClientFactory : IAsyncDisposable
{
    /// <summary>
    /// Validates per-connection settings (SOCKS 0x09/0x80 JSON, or PT 1.0 <c>k=v</c> arguments) and
    /// returns the transport's parsed form, handed back in <see cref="ConnectRequest.Settings"/>.
    /// Throws <see cref="SettingsException"/> naming the offending key.
    /// </summary>
    object? ParseSettings(ConnectionSettings settings);

    /// <summary>
    /// Opens a connection for one session. Returns a connected duplex stream once the far end is
    /// reachable, or throws <see cref="TransportConnectException"/> with the failure to report.
    /// </summary>
    ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken);
}

/// <summary>
/// A client factory whose start takes time or can fail after construction (an external PT 1.0
/// program, spec/external.md §4): the host awaits <see cref="StartAsync"/> before it opens the SOCKS
/// front end and writes the CMETHOD line; a <see cref="TransportOptionsException"/> becomes CMETHOD-ERROR.
/// </summary>
public interface IStartableClientFactory
{
    /// <summary>Finishes starting; throws <see cref="TransportOptionsException"/> when the transport cannot run.</summary>
    ValueTask StartAsync(CancellationToken cancellationToken);
}

/// <summary>One session's request to a client factory.</summary>
/// <param name="Destination">The SOCKS request's destination; <see cref="Destination.IsUnspecified"/> when a PT 2.0 client sent <c>[::0]:0</c>.</param>
/// <param name="Settings">What <see cref="IClientFactory.ParseSettings"/> returned.</param>
/// <param name="Session">A process-unique session number for logs.</param>
/// <param name="Kind">A byte stream (SOCKS), or a UDP association whose stream carries framed datagrams (TURN, spec/turn.md §5).</param>
public sealed record ConnectRequest(Destination Destination, object? Settings, long Session, SessionKind Kind = SessionKind.Stream);

/// <summary>What a session carries end to end.</summary>
public enum SessionKind
{
    /// <summary>A TCP byte stream to the destination or target.</summary>
    Stream,
    /// <summary>
    /// A UDP association (spec/turn.md §5): the stream carries datagram frames, which the server
    /// process's host turns into UDP datagrams to allow-listed peers or the bound target.
    /// </summary>
    Datagram,
}

/// <summary>Server side of a transport.</summary>
public interface IServerFactory : IAsyncDisposable
{
    /// <summary>
    /// Creates fresh keys/pins and returns the <c>options</c> entries both processes need
    /// (<c>pthost generate-config</c>). Writes nothing outside the state directory.
    /// </summary>
    GeneratedConfiguration GenerateConfiguration();

    /// <summary>Serves sessions bound to one target: every accepted session goes to <see cref="ServerBinding.Target"/>.</summary>
    ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken);

    /// <summary>Serves free sessions: each names its own destination, which the host checks against <c>allow</c>.</summary>
    ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken);
}

/// <summary>The options both processes need, as JSON objects.</summary>
public sealed record GeneratedConfiguration(JObject Client, JObject Server);

/// <summary>Where and for whom a server transport serves.</summary>
/// <param name="BindAddress">The configured <c>bindaddr</c>; a relay-based transport may dial out instead of listening.</param>
/// <param name="Target">The bound target, or null for a free server.</param>
/// <param name="Handler">The host's side of every accepted session.</param>
public sealed record ServerBinding(System.Net.IPEndPoint BindAddress, Destination? Target, IInboundHandler Handler);

/// <summary>A running server transport.</summary>
public interface IServerManager : IAsyncDisposable
{
    /// <summary>The address reported in the SMETHOD line (the bound listener, or what a relay assigned).</summary>
    System.Net.IPEndPoint LocalEndPoint { get; }

    /// <summary>Arguments for the SMETHOD line's <c>ARGS:</c> (keys and values unescaped).</summary>
    IReadOnlyDictionary<string, string> Args { get; }

    /// <summary>Stops accepting; sessions in progress continue until they end or the token fires.</summary>
    Task StopAsync(CancellationToken cancellationToken);
}

/// <summary>
/// The host's half of server sessions (spec/session.md §3). A server transport only accepts or
/// receives a stream and hands it here; the host reads the preamble, opens the onward connection
/// (the bound target, an allow-listed destination, the ExtORPort, or its UDP association), writes
/// the reply, relays with half-closes, counts the session and its bytes (STATUS, spec/ipc.md §4.7),
/// logs, and disposes the stream. No member throws for a session's failure.
/// </summary>
public interface IInboundHandler
{
    /// <summary>
    /// Serves one session whose stream starts with the session preamble (spec/session.md §3);
    /// completes when the session is over. The stream is the host's from the call on.
    /// </summary>
    /// <param name="stream">The transport's stream, after its own handshake.</param>
    /// <param name="remote">The transport-level peer (client process or relay), for logs and the ExtORPort's USERADDR.</param>
    /// <param name="cancellationToken">Aborts the session (the transport's shutdown after its drain time).</param>
    Task ServeAsync(Stream stream, System.Net.EndPoint? remote, CancellationToken cancellationToken);

    /// <summary>
    /// As <see cref="ServeAsync(Stream, System.Net.EndPoint?, CancellationToken)"/> for a stream whose
    /// preamble the transport has read itself with <see cref="SessionPreamble.ReadAsync"/> (jet must see
    /// it to pick among racing candidates); the host goes on with the onward connection and the reply.
    /// </summary>
    Task ServeAsync(Stream stream, System.Net.EndPoint? remote, SessionRequest request, CancellationToken cancellationToken);

    /// <summary>
    /// Serves a stream that carries no preamble and expects no reply (a PT 1.0 program's connection to
    /// its ORPort, the xor fixture): its bytes go to the bound target, or the ExtORPort, at once.
    /// </summary>
    Task ServeRawAsync(Stream stream, System.Net.EndPoint? remote, CancellationToken cancellationToken);

    /// <summary>
    /// Serves one UDP association whose frames travel one per datagram over <paramref name="carrier"/>
    /// (spec/turn.md §5.6: an ASPORT association, a RUD datagram stream); completes when it is over,
    /// after which the carrier is completed.
    /// </summary>
    Task ServeAssociationAsync(IDatagramCarrier carrier, System.Net.EndPoint? remote, CancellationToken cancellationToken);

    /// <summary>
    /// Reports a session that failed before the transport could hand it over (TLS refused, a relay
    /// unreachable, no client came): the host counts it as FAILED and logs <paramref name="reason"/>.
    /// </summary>
    void SessionFailed(System.Net.EndPoint? remote, string reason);

    /// <summary>
    /// Listens on TCP with the host's accept loop (spec/session.md §4): <c>TCP_NODELAY</c>, a limit on
    /// open connections (over it a connection is reset and counted as FAILED), and on stop a drain that
    /// ends in <paramref name="serve"/>'s token firing. <paramref name="serve"/> owns the socket.
    /// Throws <see cref="TransportOptionsException"/> when the address cannot be bound.
    /// </summary>
    ISessionListener ListenTcp(System.Net.IPEndPoint bindAddress, Func<System.Net.Sockets.Socket, CancellationToken, Task> serve);
}

/// <summary>A TCP listener the host runs for a server transport (<see cref="IInboundHandler.ListenTcp"/>).</summary>
public interface ISessionListener : IAsyncDisposable
{
    /// <summary>The bound address (the actual port when 0 was asked for).</summary>
    System.Net.IPEndPoint LocalEndPoint { get; }

    /// <summary>Stops accepting; connections being served go on until <paramref name="drain"/> fires, then are aborted.</summary>
    Task StopAsync(CancellationToken drain);
}

/// <summary>
/// The server side of a datagram carrier (spec/turn.md §5.6): moves one UDP association's frames
/// (spec/turn.md §5.2, LENGTH included), exactly one per datagram, to and from the client process.
/// </summary>
public interface IDatagramCarrier
{
    /// <summary>The largest datagram the carrier moves; a frame above it is dropped.</summary>
    int MaxFrameLength { get; }

    /// <summary>
    /// Receives the next datagram into <paramref name="buffer"/> (at least <see cref="MaxFrameLength"/>
    /// bytes): its length, or -1 once the carrier has ended. One caller at a time.
    /// </summary>
    ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Sends one frame as one datagram; false when it was dropped (queue full, carrier gone). Never waits for the peer.</summary>
    ValueTask<bool> SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken);

    /// <summary>Ends the carrier: a pending receive returns -1, later datagrams are dropped.</summary>
    void Complete();
}
