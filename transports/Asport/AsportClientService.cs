using System.Net;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>
/// <c>pthost asport-client --config FILE</c> (spec/asport.md §4.4): the seed's client as a command. It
/// registers with a <c>pthost relay asport</c> and forwards the public port's TCP connections and UDP
/// datagrams to a local service, reconnecting with back-off (§4.3). It has the shape of a relay service
/// (options as data, a LISTEN line, exit codes), so the executable runs it without knowing its types.
/// </summary>
public sealed class AsportClientService : IRelayService
{
    /// <summary>How long the first registration may take before the command gives up (exit 69).</summary>
    public static readonly TimeSpan FirstRegistration = TimeSpan.FromMinutes(5);

    public string Name => "asport-client";

    public string Description => "Expose a local TCP and/or UDP service through a pthost relay asport (spec/asport.md §4.4).";

    public IReadOnlyList<RelayOption> Options { get; } =
    [
        new("config", RelayOptionKind.File, "The JSON configuration file (spec/asport.md §4.4).", Required: true),
        new("instance", RelayOptionKind.Name, "The instance id in the metrics (spec/asport.md §4.4); default: asport-client- and 16 random hex digits."),
    ];

    public IRelay Create(RelayArguments arguments, ILoggerFactory loggerFactory)
    {
        if (QuicLibrary.UnavailableReason is { } why) throw new PlatformNotSupportedException(why);
        string file = arguments.File("config")!;
        AsportClientCommandOptions options;
        try { options = AsportClientCommandOptions.Load(file); }
        catch (Exception e) when (e is OptionsException or IOException or UnauthorizedAccessException)
        {
            throw new TransportOptionsException($"{file}: {e.Message}", e);
        }
        string instance = arguments.Name("instance") ?? "asport-client-" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        return new Running(options, instance, loggerFactory.CreateLogger("PtHost.AsportClient"));
    }

    private sealed class Running(AsportClientCommandOptions options, string instance, ILogger log) : IRelay, IMetricsSource
    {
        private readonly AsportRelayClient _client = new(new AsportRelayClientOptions
        {
            Server = options.Registration.Server,
            Verification = QuicPeerVerification.Pinned(options.Registration.Pin),
            User = options.Registration.User,
            Password = options.Registration.Password,
            Mode = options.Registration.Mode,
            PortStart = options.Registration.PortStart,
            PortEnd = options.Registration.PortEnd,
            LocalTarget = options.Local,
        }, log);
        private int _port;

        /// <summary>Starts the client and waits for its first registration; a refusal then is a configuration error (exit 78).</summary>
        public async Task StartAsync(CancellationToken cancellationToken)
        {
            var refused = new TaskCompletionSource<ServerHelloCode>(TaskCreationOptions.RunContinuationsAsynchronously);
            _client.OnRefused += code => refused.TrySetResult(code);
            _client.OnRegistered += port =>
            {
                Volatile.Write(ref _port, port);
                log.LogInformation("asport-client: registered; public port {Port} forwards to the local service (mode {Mode})", port, (int)options.Registration.Mode);
            };
            _client.Start();
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            limit.CancelAfter(FirstRegistration);
            var first = await Task.WhenAny(_client.Registered, refused.Task, Task.Delay(Timeout.Infinite, limit.Token)).ConfigureAwait(false);
            if (first == refused.Task)
                throw new TransportOptionsException($"the ASPORT server refused the registration: {refused.Task.Result} (spec/asport.md §3.2)");
            if (first != _client.Registered)
            {
                cancellationToken.ThrowIfCancellationRequested();
                throw new IOException($"no registration with {options.Registration.Server} within {FirstRegistration.TotalMinutes:0} minutes");
            }
            Volatile.Write(ref _port, await _client.Registered.ConfigureAwait(false));
        }

        /// <summary>spec/asport.md §4.4: the public address (the relay's IP, the port it bound), then the mode.</summary>
        public string ListenText => $"{new IPEndPoint(options.Registration.Server.Address, Volatile.Read(ref _port))} mode={(int)options.Registration.Mode}";

        /// <summary>
        /// spec/asport.md §4.4 (metrics, <c>--metrics</c>): the forwarded TCP connections as sessions (role
        /// asport-client), the UDP packets forwarded, and the client's own link to the relay: QUIC connections,
        /// registrations, reconnects and whether a public port serves now.
        /// </summary>
        public void WriteMetrics(MetricsWriter m)
        {
            m.Gauge("pthost_instance_info", "The process's instance id (constant 1).", 1, ("id", instance), ("process", "asport-client"),
                ("version", typeof(AsportClientService).Assembly.GetName().Version?.ToString() ?? "0"));
            _client.Sessions.WriteMetrics(m, "asport", "asport-client");
            m.Counter("pthost_asport_client_udp_packets_total", "UDP packets forwarded to the local service.", Interlocked.Read(ref _client.UdpForwarded));
            m.Counter("pthost_asport_client_connections_total", "QUIC connections to the relay that completed their handshake.", Interlocked.Read(ref _client.Connections));
            m.Counter("pthost_asport_client_registrations_total", "Registrations the relay accepted.", Interlocked.Read(ref _client.Registrations));
            m.Counter("pthost_asport_client_reconnects_total", "New connections started after one was lost or failed.", Interlocked.Read(ref _client.Reconnects));
            m.Gauge("pthost_asport_client_registered", "1 while registered (the public port serves), else 0.", Volatile.Read(ref _client.IsRegistered));
        }

        public TimeSpan? StatusInterval => null;

        public string StatusText() => throw new NotSupportedException("asport-client writes no STATUS lines");

        public async ValueTask DisposeAsync()
        {
            await _client.DisposeAsync().ConfigureAwait(false);
            log.LogInformation("asport-client: {Connections} connections to the relay, {Tcp} TCP connections and {Udp} UDP packets forwarded",
                _client.Connections, _client.TcpForwarded, _client.UdpForwarded);
        }
    }
}

/// <summary>
/// The configuration of <c>pthost asport-client</c> (spec/asport.md §4.4): a strict JSON object with the
/// transport's registration keys (§6.1) and <c>local</c>, the service's <c>ip:port</c>.
/// <code>
/// { "server": "203.0.113.5:4433", "pin": "64 hex digits", "user": "UUID", "password": "…",
///   "mode": 0, "ports": "20000-20010", "local": "127.0.0.1:8080" }
/// </code>
/// </summary>
internal sealed record AsportClientCommandOptions(AsportServerOptions Registration, IPEndPoint Local)
{
    public static AsportClientCommandOptions Load(string path)
    {
        var r = OptionsReader.Parse(File.ReadAllText(path));
        r.RejectUnknown([.. AsportServerOptions.Keys, "local"]);
        var registration = AsportServerOptions.Read(r);
        var local = r.Require("local").Parse("local", t => Destination.TryParse(t, out var d) && d.Address is not null && d.Port != 0 ? new IPEndPoint(d.Address, d.Port) : null,
            "must be \"ip:port\" of the local service")!;
        return new(registration, local);
    }
}
