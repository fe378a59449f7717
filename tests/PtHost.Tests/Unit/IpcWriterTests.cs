using System.Net;
using PtHost.Contract;
using PtHost.Ipc;

namespace PtHost.Tests.Unit;

public class IpcWriterTests
{
    private readonly StringWriter _out = new();
    private readonly IpcWriter _writer;

    public IpcWriterTests() => _writer = new IpcWriter(_out);

    private string Written => _out.ToString();

    [Fact]
    public void Version_line()
    {
        _writer.Version("2");
        Assert.Equal("VERSION 2\n", Written);
    }

    [Fact]
    public void Version_error_line()
    {
        _writer.VersionError();
        Assert.Equal("VERSION-ERROR no-version\n", Written);
    }

    [Fact]
    public void Env_error_line_is_one_line()
    {
        _writer.EnvError("bad\r\nthing\nhere");
        Assert.Equal("ENV-ERROR bad  thing here\n", Written);
    }

    [Fact]
    public void Cmethod_line_has_transport_protocol_and_endpoint()
    {
        _writer.Cmethod("plain", "socks5", new IPEndPoint(IPAddress.Loopback, 1080));
        _writer.Cmethod("obfs4", "socks5", new IPEndPoint(IPAddress.IPv6Loopback, 1081));
        Assert.Equal("CMETHOD plain socks5 127.0.0.1:1080\nCMETHOD obfs4 socks5 [::1]:1081\n", Written);
    }

    [Fact]
    public void Cmethod_error_and_done_lines()
    {
        _writer.CmethodError("obfs4", "no such\ntransport");
        _writer.CmethodsDone();
        Assert.Equal("CMETHOD-ERROR obfs4 no such transport\nCMETHODS DONE\n", Written);
    }

    [Fact]
    public void Smethod_line_without_args_has_no_ARGS()
    {
        _writer.Smethod("plain", new IPEndPoint(IPAddress.Any, 443), new Dictionary<string, string>());
        Assert.Equal("SMETHOD plain 0.0.0.0:443\n", Written);
    }

    [Fact]
    public void Smethod_line_lists_args_comma_separated_in_order()
    {
        var args = new List<KeyValuePair<string, string>> { new("cert", "AAAA"), new("iat-mode", "0") };
        _writer.Smethod("obfs4", new IPEndPoint(IPAddress.Parse("2001:db8::1"), 443), new OrderedDictionary<string, string>(args));
        Assert.Equal("SMETHOD obfs4 [2001:db8::1]:443 ARGS:cert=AAAA,iat-mode=0\n", Written);
    }

    [Fact]
    public void Smethod_args_escape_equals_comma_and_backslash()
    {
        _writer.Smethod("t", new IPEndPoint(IPAddress.Loopback, 1), new Dictionary<string, string> { ["k=,\\"] = "v=1,2\\3" });
        Assert.Equal(@"SMETHOD t 127.0.0.1:1 ARGS:k\=\,\\=v\=1\,2\\3" + "\n", Written);
    }

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("a=b", @"a\=b")]
    [InlineData("a,b", @"a\,b")]
    [InlineData(@"a\b", @"a\\b")]
    [InlineData("a;b c", "a;b c")]
    [InlineData("cert=ab+/==", @"cert\=ab+/\=\=")]
    [InlineData("line\r\nbreak", "line  break")]
    public void EscapeArg_backslash_escapes_equals_comma_and_backslash_and_blanks_newlines(string raw, string escaped) =>
        Assert.Equal(escaped, IpcWriter.EscapeArg(raw));

    [Fact]
    public void Smethod_args_never_break_the_line()
    {
        _writer.Smethod("t", new IPEndPoint(IPAddress.Loopback, 1), new Dictionary<string, string> { ["k\n"] = "v\r\nSMETHODS DONE" });
        Assert.Equal("SMETHOD t 127.0.0.1:1 ARGS:k =v  SMETHODS DONE\n", Written);
    }

    [Fact]
    public void Smethod_error_and_done_lines()
    {
        _writer.SmethodError("plain", "address in use\r\n");
        _writer.SmethodsDone();
        Assert.Equal("SMETHOD-ERROR plain address in use  \nSMETHODS DONE\n", Written);
    }

    [Fact]
    public void Log_line_quotes_the_message()
    {
        _writer.Log("notice", "connected to the relay");
        Assert.Equal("LOG SEVERITY=notice MESSAGE=\"connected to the relay\"\n", Written);
    }

    [Fact]
    public void Log_line_scrubs_addresses_unless_unsafe_logging_is_on()
    {
        _writer.Log("notice", "connected to 192.0.2.1:443 via [2001:db8::1]:80");
        _writer.UnsafeLogging = true;
        _writer.Log("notice", "connected to 192.0.2.1:443 via [2001:db8::1]:80");
        Assert.Equal("LOG SEVERITY=notice MESSAGE=\"connected to [scrubbed] via [scrubbed]\"\n" +
                     "LOG SEVERITY=notice MESSAGE=\"connected to 192.0.2.1:443 via [2001:db8::1]:80\"\n", Written);
    }

    [Fact]
    public void Log_message_escapes_quote_backslash_and_control_characters()
    {
        _writer.Log("warning", "a \"b\" \\ c\nd\re\tf\0g\u001bh");
        Assert.Equal("LOG SEVERITY=warning MESSAGE=\"a \\\"b\\\" \\\\ c\\nd\\re\\tf g h\"\n", Written);
        Assert.Single(Written.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Theory]
    [InlineData("", "\"\"")]
    [InlineData("x", "\"x\"")]
    [InlineData("é😀", "\"é😀\"")]
    [InlineData("\"", "\"\\\"\"")]
    [InlineData("\\", "\"\\\\\"")]
    public void Quote_wraps_in_double_quotes(string raw, string quoted) => Assert.Equal(quoted, IpcWriter.Quote(raw));

    [Fact]
    public void Status_line_reports_the_counters()
    {
        var stats = new TransportStats(SessionsOpened: 10, SessionsActive: 2, SessionsFailed: 3, BytesIn: 1234, BytesOut: 5678);
        _writer.Status("plain", stats);
        Assert.Equal("STATUS TRANSPORT=plain CONNECTIONS=2 OPENED=10 FAILED=3 BYTES-IN=1234 BYTES-OUT=5678 SPLICE-FALLBACKS=0 DATAGRAMS-DROPPED=0\n", Written);
    }

    [Fact]
    public void Cmessage_and_Smessage_lines_carry_the_payload_on_one_line()
    {
        _writer.Cmessage("plain", "{\"v\":1}");
        _writer.Smessage("plain", "{\"a\":\"x\ny\"}\r\nSMESSAGE plain {}");
        Assert.Equal("CMESSAGE plain {\"v\":1}\nSMESSAGE plain {\"a\":\"x y\"}  SMESSAGE plain {}\n", Written);
    }

    [Fact]
    public void Every_line_ends_in_LF_not_CRLF_whatever_the_writer_NewLine()
    {
        var sw = new StringWriter { NewLine = "\r\n" };
        var w = new IpcWriter(sw);
        w.Version("2");
        w.CmethodsDone();
        Assert.Equal("VERSION 2\nCMETHODS DONE\n", sw.ToString());
    }

    [Fact]
    public void Every_line_is_flushed()
    {
        var flushes = 0;
        var tw = new Moq.Mock<TextWriter> { CallBase = true };
        tw.Setup(t => t.Flush()).Callback(() => flushes++);
        var w = new IpcWriter(tw.Object);
        w.Version("2");
        w.Log("notice", "x");
        Assert.Equal(2, flushes);
    }

    [Fact]
    public void Broken_stdout_is_ignored()
    {
        var tw = new Moq.Mock<TextWriter> { CallBase = true };
        tw.Setup(t => t.Write(Moq.It.IsAny<string>())).Throws(new IOException("EPIPE"));
        var w = new IpcWriter(tw.Object);
        w.Version("2"); // must not throw
        w.SmethodsDone();
    }

    [Fact]
    public void Concurrent_writers_never_interleave_lines()
    {
        Parallel.For(0, 200, i => _writer.Log("notice", new string((char)('a' + i % 26), 100)));
        var lines = Written.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(200, lines.Length);
        Assert.All(lines, l => Assert.Matches("^LOG SEVERITY=notice MESSAGE=\"([a-z])\\1{99}\"$", l));
    }
}
