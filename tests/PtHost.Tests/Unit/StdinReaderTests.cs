using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

public class StdinReaderTests
{
    private readonly ListLogger<SignalRouter> _routerLog = new();
    private readonly ListLogger<StdinReader> _readerLog = new();
    private readonly SignalRouter _server;
    private readonly ISignalChannel _plain;

    public StdinReaderTests()
    {
        _server = new SignalRouter(Role.Server, new IpcWriter(TextWriter.Null), _routerLog);
        _plain = _server.For("plain");
    }

    private static string Envelope(long mid, string cid = "c1") => $"{{\"v\":1,\"mid\":{mid},\"cid\":\"{cid}\",\"kind\":\"k\"}}";

    private static string Line(long mid, string keyword = "CMESSAGE", string transport = "plain") => $"{keyword} {transport} {Envelope(mid)}";

    private void Run(byte[] input, int chunk = int.MaxValue, SignalRouter? router = null) =>
        new StdinReader(new ChunkedStream(input, chunk), router ?? _server, _readerLog).Run();

    private void Run(string input, int chunk = int.MaxValue) => Run(Encoding.UTF8.GetBytes(input), chunk);

    private List<long> DeliveredIds(ISignalChannel? channel = null)
    {
        var ids = new List<long>();
        while ((channel ?? _plain).Incoming.TryRead(out var s)) ids.Add(s.MessageId);
        return ids;
    }

    private int ReaderWarnings(string containing) => _readerLog.Entries.Count(e => e.Level == LogLevel.Warning && e.Message.Contains(containing));

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(64)]
    public void Each_LF_terminated_line_reaches_the_router_in_order(int chunk)
    {
        Run(Line(1) + "\n" + Line(2) + "\n" + Line(3) + "\n", chunk);
        Assert.Equal([1L, 2L, 3L], DeliveredIds());
        Assert.Empty(_readerLog.Entries);
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(1)]
    [InlineData(5)]
    public void CRLF_line_ends_are_accepted(int chunk)
    {
        Run(Line(1) + "\r\n" + Line(2) + "\r\n\r\n" + Line(3) + "\n", chunk);
        Assert.Equal([1L, 2L, 3L], DeliveredIds());
        Assert.Empty(_readerLog.Entries); // the blank CRLF line is skipped silently
    }

    [Fact]
    public void CR_is_stripped_before_the_payload_reaches_the_router()
    {
        // A payload of exactly MaxPayloadBytes characters plus a CR would be "too long" if the CR were kept.
        string prefix = "CMESSAGE plain ";
        string env = Envelope(1);
        string payload = env[..^1] + ",\"pad\":\"" + new string('x', SignalRouter.MaxPayloadBytes - env.Length - 9) + "\"}";
        Assert.Equal(SignalRouter.MaxPayloadBytes, payload.Length);
        Run(prefix + payload + "\r\n");
        Assert.Equal([1L], DeliveredIds());
    }

    [Fact]
    public void Blank_lines_are_skipped_silently()
    {
        Run("\n\n" + Line(1) + "\n\n");
        Assert.Equal([1L], DeliveredIds());
        Assert.Empty(_readerLog.Entries);
    }

    [Fact]
    public void Last_line_without_newline_is_delivered_at_end_of_input()
    {
        Run(Line(1) + "\n" + Line(2));
        Assert.Equal([1L, 2L], DeliveredIds());
    }

    [Fact]
    public void Empty_input_delivers_nothing()
    {
        Run("");
        Assert.Empty(DeliveredIds());
        Assert.Empty(_readerLog.Entries);
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(8192)]
    [InlineData(1000)]
    public void Over_long_line_is_discarded_whole(int chunk)
    {
        // Past the 64 KiB cut, the rest of the line looks like a valid message: it must not be delivered.
        string overLong = new string('x', StdinReader.MaxLineBytes) + Line(2);
        Run(Line(1) + "\n" + overLong + "\n" + Line(3) + "\n", chunk);
        Assert.Equal([1L, 3L], DeliveredIds());
        Assert.Equal(1, ReaderWarnings("discarded"));
        Assert.DoesNotContain(_routerLog.Entries, e => e.Message.Contains("dropped"));
    }

    [Fact]
    public void Over_long_line_that_starts_like_a_message_is_discarded_whole()
    {
        string overLong = Line(2)[..^1] + ",\"pad\":\"" + new string('y', StdinReader.MaxLineBytes) + "\"}";
        Run(overLong + "\n" + Line(3) + "\n", 4096);
        Assert.Equal([3L], DeliveredIds());
        Assert.Equal(1, ReaderWarnings("discarded"));
        Assert.Empty(_routerLog.Entries);
    }

    [Fact]
    public void Over_long_last_line_without_newline_is_discarded()
    {
        Run(Line(1) + "\n" + new string('z', StdinReader.MaxLineBytes + 1));
        Assert.Equal([1L], DeliveredIds());
        Assert.Empty(_routerLog.Entries);
        Assert.Equal(0, ReaderWarnings("ignored"));
    }

    [Fact]
    public void Line_of_exactly_64KiB_reaches_the_router_and_one_byte_more_does_not()
    {
        string head = "CMESSAGE plain ";
        string exact = head + new string('p', StdinReader.MaxLineBytes - head.Length);
        string tooLong = exact + "p";
        Run(exact + "\n" + tooLong + "\n");
        // The 64 KiB line got to the router, which refused it as a payload over 60 KiB.
        Assert.Single(_routerLog.Entries, e => e.Message.Contains("longer than"));
        Assert.Equal(1, ReaderWarnings("discarded"));
    }

    [Fact]
    public void Non_UTF8_line_is_ignored_and_reading_continues()
    {
        byte[] bad = [.. "CMESSAGE plain {\"v\":1,\"mid\":9,\"cid\":\"c"u8.ToArray(), 0xFF, .. "\",\"kind\":\"k\"}\n"u8.ToArray()];
        byte[] input = [.. Encoding.UTF8.GetBytes(Line(1) + "\n"), .. bad, .. Encoding.UTF8.GetBytes(Line(2) + "\n")];
        Run(input, 3);
        Assert.Equal([1L, 2L], DeliveredIds());
        Assert.Equal(1, ReaderWarnings("not UTF-8"));
    }

    [Fact]
    public void Multibyte_UTF8_split_across_reads_is_decoded()
    {
        string line = "CMESSAGE plain {\"v\":1,\"mid\":4,\"cid\":\"c\",\"kind\":\"k\",\"body\":\"é€😀\"}\n";
        Run(Encoding.UTF8.GetBytes(line), 1);
        Assert.True(_plain.Incoming.TryRead(out var s));
        Assert.Equal("é€😀", (string)s!.Body!);
    }

    [Theory]
    [InlineData("SMESSAGE plain {0}")]          // the keyword a client reads, not a server
    [InlineData("cmessage plain {0}")]
    [InlineData("CMESSAGE")]
    [InlineData("CMESSAGE plain")]
    [InlineData("VERSION 2")]
    [InlineData(" CMESSAGE plain {0}")]
    public void Lines_for_the_other_keyword_or_malformed_are_ignored_with_a_warning(string format)
    {
        Run(string.Format(System.Globalization.CultureInfo.InvariantCulture, format, Envelope(1)) + "\n" + Line(2) + "\n");
        Assert.Equal([2L], DeliveredIds());
        Assert.Equal(1, ReaderWarnings("ignored"));
        Assert.Empty(_routerLog.Entries);
    }

    [Fact]
    public void Client_reads_SMESSAGE_and_ignores_CMESSAGE()
    {
        var client = new SignalRouter(Role.Client, new IpcWriter(TextWriter.Null), NullLogger<SignalRouter>.Instance);
        var channel = client.For("plain");
        string smessage = "SMESSAGE plain {\"v\":1,\"mid\":5,\"sid\":\"s\",\"kind\":\"k\"}";
        Run(Encoding.UTF8.GetBytes(Line(1) + "\n" + smessage + "\n"), router: client);
        Assert.Equal([5L], DeliveredIds(channel));
        Assert.Equal(1, ReaderWarnings("ignored"));
    }

    [Fact]
    public void Payload_keeps_its_spaces()
    {
        Run("CMESSAGE plain { \"v\" : 1 , \"mid\" : 8 , \"cid\" : \"c\" , \"kind\" : \"a.b\" }\n");
        Assert.True(_plain.Incoming.TryRead(out var s));
        Assert.Equal("a.b", s!.Kind);
        Assert.Equal(8, s.MessageId);
    }

    [Fact]
    public void Line_for_an_unknown_transport_reaches_the_router_and_is_dropped_there()
    {
        Run(Line(1, transport: "obfs4") + "\n");
        Assert.Empty(DeliveredIds());
        Assert.Single(_routerLog.Entries, e => e.Message.Contains("no transport"));
    }

    [Fact]
    public void Start_reads_on_a_background_thread_and_reports_end_of_input()
    {
        using var eof = new ManualResetEventSlim();
        var reader = new StdinReader(new MemoryStream(Encoding.UTF8.GetBytes(Line(1) + "\n" + Line(2) + "\n")), _server, _readerLog);
        reader.Start(eof.Set);
        Assert.True(eof.Wait(TimeSpan.FromSeconds(10)));
        Assert.Equal([1L, 2L], DeliveredIds());
    }

    [Fact]
    public void Start_reports_end_of_input_when_the_stream_fails()
    {
        using var eof = new ManualResetEventSlim();
        var broken = new Moq.Mock<Stream>();
        broken.Setup(s => s.Read(Moq.It.IsAny<byte[]>(), Moq.It.IsAny<int>(), Moq.It.IsAny<int>())).Throws(new IOException("EIO"));
        new StdinReader(broken.Object, _server, _readerLog).Start(eof.Set);
        Assert.True(eof.Wait(TimeSpan.FromSeconds(10)));
    }
    [Fact]
    public void A_STATUS_line_requests_status_and_is_not_a_message()
    {
        int requests = 0;
        new StdinReader(new MemoryStream(Encoding.UTF8.GetBytes("STATUS\nSTATUS\r\n" + Line(1) + "\nSTATUS x\n")), _server, _readerLog)
        { StatusRequested = () => requests++ }.Run();
        Assert.Equal(2, requests);
        Assert.Equal([1L], DeliveredIds());
        Assert.Equal(1, ReaderWarnings("stdin line ignored"));
    }

    [Fact]
    public void Without_a_status_handler_a_STATUS_line_is_ignored_with_a_warning()
    {
        Run("STATUS\n");
        Assert.Equal(1, ReaderWarnings("stdin line ignored"));
    }
}
