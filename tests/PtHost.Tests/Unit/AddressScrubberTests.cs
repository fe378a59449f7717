using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Logging;

namespace PtHost.Tests.Unit;

/// <summary>Safe logging (spec/ipc.md §4.11): what counts as an address, and the logging layer that scrubs every line.</summary>
public partial class AddressScrubberTests
{
    [Theory]
    [InlineData("from 127.0.0.1:40000: closed", "from [scrubbed]: closed")]
    [InlineData("peer 192.0.2.7 refused", "peer [scrubbed] refused")]
    [InlineData("ended at 10.1.2.3:5000.", "ended at [scrubbed].")]
    [InlineData("via [::1]:5000 and [fe80::1%eth0]:80", "via [scrubbed] and [scrubbed]")]
    [InlineData("peer ::1 and 2001:db8::7: gone", "peer [scrubbed] and [scrubbed]: gone")]
    [InlineData("mapped ::ffff:10.0.0.1 here", "mapped [scrubbed] here")]
    [InlineData("Connection refused bridge.example.org:443", "Connection refused [scrubbed]")]
    [InlineData("to localhost:8080 and localhost", "to [scrubbed] and [scrubbed]")]
    [InlineData("proxy socks5://user:secret@proxy.example:1080 failed", "proxy socks5://[scrubbed] failed")]
    [InlineData("candidate ws://relay.example/jet/accept", "candidate ws://[scrubbed]/jet/accept")]
    public void Address_shaped_text_is_scrubbed(string line, string scrubbed) =>
        Assert.Equal(scrubbed, AddressScrubber.Scrub(line));

    [Theory]
    [InlineData("UDP association 7: the first datagram is not OPEN [::]:0; CLOSE sent")]
    [InlineData("listening on 0.0.0.0:0")]
    [InlineData("at 12:30:45.120, pin AB:CD:EF:01:23")]
    [InlineData("Could not load 'PtHost.Contract, Version=1.0.0.0, Culture=neutral'")]
    [InlineData("options.plain.serverAddress: must be \"host:port\" (spec/ipc.md §3.5, TLS 1.3, ngtcp2 0.12.1)")]
    [InlineData("bind request: 82 96 44 a1 00 00 00 04; zid 5: ok; 300.1.2.3 is no address")]
    public void Text_that_names_no_host_stays(string line) =>
        Assert.Equal(line, AddressScrubber.Scrub(line));

    [Fact]
    public void A_host_name_from_an_address_argument_is_scrubbed_wherever_it_appears()
    {
        var tokens = new List<string>();
        AddressScrubber.AddTokens(new Destination("bridge", 443), tokens);
        AddressScrubber.AddTokens(new DnsEndPoint("relay-7", 80), tokens);
        Assert.Equal("to [scrubbed]: [scrubbed] is down; [scrubbed] and relay-7b stay",
            AddressScrubber.Scrub("to bridge:443: bridge is down; relay-7 and relay-7b stay", tokens));
    }

    [Fact]
    public void A_host_name_from_an_argument_goes_with_the_port_after_it()
    {
        var tokens = new List<string>();
        AddressScrubber.AddTokens(new DnsEndPoint("relay", 8888), tokens);
        AddressScrubber.AddTokens(new DnsEndPoint("127.0.0.1", 8888), tokens);
        Assert.Equal("connecting to [scrubbed]: refused; [scrubbed]: refused",
            AddressScrubber.Scrub("connecting to relay:9999: refused; 127.0.0.1:34907: refused", tokens));
    }

    [Fact]
    public void Every_sink_gets_message_arguments_and_exception_scrubbed()
    {
        var sink = new RecordingProvider();
        using (var loggers = LoggerFactory.Create(b => b.AddProvider(sink).SetMinimumLevel(LogLevel.Debug).ScrubAddresses()))
        {
            var log = loggers.CreateLogger("test");
            var error = new SocketException((int)SocketError.ConnectionRefused, "Connection refused 198.51.100.4:443");
            log.LogWarning(new IOException("outer", error), "session from {Remote} to {Destination}: {Error}",
                new IPEndPoint(IPAddress.Parse("203.0.113.9"), 51000), new Destination("secret.example", 443), "gone: secret.example");
            SessionFailed(log, 7, new IPEndPoint(IPAddress.IPv6Loopback, 5555));
        }
        var (message, exception, arguments) = sink.Entries[0];
        Assert.Equal("session from [scrubbed] to [scrubbed]: gone: [scrubbed]", message);
        Assert.Contains("Connection refused [scrubbed]", exception, StringComparison.Ordinal);
        Assert.DoesNotContain("198.51.100.4", exception, StringComparison.Ordinal);
        Assert.Equal(new string?[] { "[scrubbed]", "[scrubbed]", "gone: [scrubbed]" }, arguments);
        Assert.Equal("session 7 from [scrubbed] failed", sink.Entries[1].Message);
    }

    [Fact]
    public void Without_the_layer_the_same_lines_keep_their_addresses()
    {
        var sink = new RecordingProvider();
        using (var loggers = LoggerFactory.Create(b => b.AddProvider(sink)))
            SessionFailed(loggers.CreateLogger("test"), 7, new IPEndPoint(IPAddress.IPv6Loopback, 5555));
        Assert.Equal("session 7 from [::1]:5555 failed", sink.Entries[0].Message);
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "session {Id} from {Remote} failed")]
    private static partial void SessionFailed(ILogger log, long id, EndPoint remote);

    private sealed class RecordingProvider : ILoggerProvider
    {
        public List<(string Message, string Exception, string?[] Arguments)> Entries { get; } = [];

        public ILogger CreateLogger(string categoryName) => new Recorder(this);

        public void Dispose() { }

        private sealed class Recorder(RecordingProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                var arguments = (state as IReadOnlyList<KeyValuePair<string, object?>>)?
                    .Where(kv => kv.Key != "{OriginalFormat}").Select(kv => kv.Value?.ToString()).ToArray() ?? [];
                lock (owner.Entries) owner.Entries.Add((formatter(state, exception), exception?.ToString() ?? "", arguments));
            }
        }
    }
}
