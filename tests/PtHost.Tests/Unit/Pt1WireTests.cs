using System.Net;
using System.Text;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Transports.External;

namespace PtHost.Tests.Unit;

/// <summary>The PT 1.0 text formats the external transport reads and writes (pt-spec §3.2–§3.5; spec/external.md §4).</summary>
public class Pt1WireTests
{
    [Fact]
    public void Arguments_that_fit_go_in_UNAME_with_a_lone_NUL_password()
    {
        var (user, password) = Pt1Wire.SplitForRfc1929("cert=abc;iat-mode=0"u8.ToArray());
        Assert.Equal("cert=abc;iat-mode=0"u8.ToArray(), user);
        Assert.Equal([0], password);
    }

    [Fact]
    public void Arguments_longer_than_255_bytes_continue_in_PASSWD()
    {
        var args = Encoding.ASCII.GetBytes("cert=" + new string('x', 295));
        var (user, password) = Pt1Wire.SplitForRfc1929(args);
        Assert.Equal(255, user.Length);
        Assert.Equal(45, password.Length);
        Assert.Equal(args, user.Concat(password).ToArray());
        Assert.Throws<ArgumentException>(() => Pt1Wire.SplitForRfc1929(new byte[511]));
    }

    [Fact]
    public void Connection_arguments_escape_backslash_equals_and_semicolon()
    {
        Assert.Equal(@"a\=b=c\;d\\e;k=v", Pt1Wire.FormatConnectionArgs([new(@"a=b", @"c;d\e"), new("k", "v")]));
    }

    [Fact]
    public void Server_transport_options_escape_colon_semicolon_equals_and_backslash()
    {
        Assert.Equal(@"obfs4:iat-mode=1;obfs4:a\:b=c\;d\=e\\", Pt1Wire.FormatServerOptions("obfs4", [new("iat-mode", "1"), new("a:b", @"c;d=e\")]));
    }

    [Fact]
    public void JSON_settings_become_text_arguments_and_objects_are_refused()
    {
        var s = new ConnectionSettings(JObject.Parse("""{"cert":"abc","iat-mode":0,"flag":true}"""), SettingsSource.Json);
        Assert.Equal("cert=abc;iat-mode=0;flag=true", Pt1Wire.FormatConnectionArgs(Pt1Wire.SettingsToArgs(s)));
        var bad = new ConnectionSettings(JObject.Parse("""{"cert":{"x":1}}"""), SettingsSource.Json);
        Assert.Equal("cert", Assert.Throws<SettingsException>(() => Pt1Wire.SettingsToArgs(bad)).Key);
    }

    [Fact]
    public void SMETHOD_with_ARGS_is_read_and_unescaped()
    {
        var (method, ep, args) = Pt1Wire.ParseSmethod(@"obfs4 127.0.0.1:4711 ARGS:cert=a\,b\=c\\,iat-mode=0");
        Assert.Equal("obfs4", method);
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:4711"), ep);
        Assert.Equal(@"a,b=c\", args["cert"]);
        Assert.Equal("0", args["iat-mode"]);
        Assert.Throws<FormatException>(() => Pt1Wire.ParseSmethod("obfs4 nowhere"));
        Assert.Throws<FormatException>(() => Pt1Wire.ParseSmethodArgs("novalue"));
    }

    [Fact]
    public void CMETHOD_is_read()
    {
        var (m, protocol, ep) = Pt1Wire.ParseCmethod("obfs4 socks5 127.0.0.1:34529");
        Assert.Equal(("obfs4", "socks5", IPEndPoint.Parse("127.0.0.1:34529")), (m, protocol, ep));
        Assert.Throws<FormatException>(() => Pt1Wire.ParseCmethod("obfs4 socks5"));
    }

    [Theory]
    [InlineData("SEVERITY=error MESSAGE=\"it \\\"broke\\\"\\nbadly\"", LogLevel.Error, "it \"broke\"\nbadly")]
    [InlineData("SEVERITY=warning MESSAGE=plain text", LogLevel.Warning, "plain text")]
    [InlineData("SEVERITY=notice MESSAGE=\"x\"", LogLevel.Information, "x")]
    [InlineData("SEVERITY=debug MESSAGE=\"\"", LogLevel.Debug, "")]
    public void LOG_lines_are_read_with_their_severity(string rest, LogLevel level, string message)
    {
        Assert.Equal((level, message), Pt1Wire.ParseLog(rest));
    }
}
