using System.Globalization;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net.Tls;

namespace PtHost.Rendezvous;

/// <summary><c>pthost relay rendezvous</c> (spec/rendezvous.md §6): its options, and the relay under the executable's host.</summary>
public sealed class RendezvousRelayService : IRelayService
{
    public string Name => "rendezvous";

    public string Description => "Run the rendezvous service: mailboxes for sealed signals between PT processes (spec/rendezvous.md).";

    public IReadOnlyList<RelayOption> Options { get; } =
    [
        new("listen", RelayOptionKind.EndPoint, "Where to listen (HTTP, or HTTPS with --tls); port 0 picks a free port.", "127.0.0.1:7520"),
        new("tls", RelayOptionKind.Flag, "Serve HTTPS: --certificate and --key, or a generated certificate whose pin the LISTEN line prints (§6)."),
        new("certificate", RelayOptionKind.File, "The HTTPS certificate (PEM file)."),
        new("key", RelayOptionKind.File, "The HTTPS certificate's private key (PEM file)."),
        new("ttl", RelayOptionKind.Seconds, "How long a message waits in a mailbox (§5).", "120"),
        new("poll-timeout", RelayOptionKind.Seconds, "The longest a receive waits for a message (§2.3).", "30"),
        new("queue", RelayOptionKind.Count, "Messages held per mailbox; the oldest is dropped when full (§5).", "64"),
        new("max-message", RelayOptionKind.Count, "The largest sealed message in bytes (§5).", "65536"),
        new("max-channels", RelayOptionKind.Count, "Channels held at once (§5).", "10000"),
        new("max-clients", RelayOptionKind.Count, "Client mailboxes per channel (§5).", "1024"),
        new("max-polls", RelayOptionKind.Count, "Receives waiting at once (§5).", "10000"),
        new("max-bytes", RelayOptionKind.Count, "Bytes of messages held at once, all channels (§5).", "67108864"),
        new("rate", RelayOptionKind.Count, "Requests per second per source (IPv4 address, IPv6 /64) (§5).", "20"),
        new("burst", RelayOptionKind.Count, "Requests a source may make at once above the rate (§5).", "100"),
        new("stats-interval", RelayOptionKind.Seconds, "Interval of the STATUS line (§6).", "60"),
    ];

    public IRelay Create(RelayArguments arguments, ILoggerFactory loggerFactory)
    {
        System.Security.Cryptography.X509Certificates.X509Certificate2? certificate = null;
        string? certFile = arguments.File("certificate"), keyFile = arguments.File("key");
        if ((certFile is null) != (keyFile is null)) throw new OptionsException("--certificate", "--certificate and --key go together");
        if (certFile is not null && !arguments.Flag("tls")) throw new OptionsException("--certificate", "needs --tls");
        if (certFile is not null)
        {
            try { certificate = PinnedTls.FromPem(File.ReadAllText(certFile), File.ReadAllText(keyFile!), "--certificate/--key"); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new TransportOptionsException($"--certificate/--key: {e.Message}", e); }
        }
        var options = new RendezvousOptions
        {
            Listen = arguments.EndPoint("listen")!,
            Tls = arguments.Flag("tls"),
            Certificate = certificate,
            Ttl = arguments.Seconds("ttl"),
            PollTimeout = arguments.Seconds("poll-timeout"),
            QueueLength = arguments.Count("queue"),
            MaxMessageBytes = arguments.Count("max-message"),
            MaxChannels = arguments.Count("max-channels"),
            MaxClients = arguments.Count("max-clients"),
            MaxPolls = arguments.Count("max-polls"),
            MaxBytes = arguments.Count("max-bytes"),
            Rate = arguments.Count("rate"),
            Burst = arguments.Count("burst"),
            StatsInterval = arguments.Seconds("stats-interval"),
        };
        return new Running(new RendezvousRelay(options, loggerFactory), options);
    }

    private sealed class Running(RendezvousRelay relay, RendezvousOptions options) : IRelay
    {
        public Task StartAsync(CancellationToken cancellationToken) => relay.StartAsync(cancellationToken);

        /// <summary>§6: the bound address, the scheme, and with HTTPS the certificate's pin.</summary>
        public string ListenText => $"{relay.LocalEndPoint} {(options.Tls ? "https" : "http")}" + (relay.CertificatePin is { } pin ? $" pin={pin}" : "");

        public TimeSpan? StatusInterval => options.StatsInterval;

        public string StatusText()
        {
            var s = relay.GetStats();
            return string.Create(CultureInfo.InvariantCulture,
                $"TRANSPORT=rendezvous CHANNELS={s.Channels} POLLS={s.Polls} HELD={s.Held} HELD-BYTES={s.HeldBytes} POSTED={s.Posted} DELIVERED={s.Delivered} EXPIRED={s.Expired} DROPPED={s.Dropped} REFUSED={s.Refused} RATE-LIMITED={s.RateLimited}");
        }

        public async ValueTask DisposeAsync() => await relay.DisposeAsync().ConfigureAwait(false);
    }
}
