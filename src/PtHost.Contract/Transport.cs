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

    /// <summary>A snapshot of this transport's counters.</summary>
    TransportStats GetStats();
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
public sealed record ConnectRequest(Destination Destination, object? Settings, long Session);

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

    /// <summary>A snapshot of this transport's counters.</summary>
    TransportStats GetStats();
}

/// <summary>The host's half of an accepted server-side session.</summary>
public interface IInboundHandler
{
    /// <summary>
    /// Opens the onward connection: the bound target, or, for a free server, the session's
    /// destination after the <c>allow</c> check. Throws <see cref="TransportConnectException"/>.
    /// </summary>
    ValueTask<Stream> OpenAsync(InboundSession session, CancellationToken cancellationToken);

    /// <summary>
    /// Carries bytes both ways between the transport's stream and the onward stream until both
    /// directions have ended (half-closes are passed on), counting bytes; disposes neither stream.
    /// </summary>
    Task RelayAsync(Stream transport, Stream onward, CancellationToken cancellationToken);
}

/// <summary>What a server transport learned about one session.</summary>
/// <param name="Remote">The transport-level peer (client process or relay).</param>
/// <param name="Destination">For a free server, where the client asked to go; null for none.</param>
/// <param name="Session">A process-unique session number for logs.</param>
public sealed record InboundSession(System.Net.EndPoint? Remote, Destination? Destination, long Session);
