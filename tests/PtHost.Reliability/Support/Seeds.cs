using System.Net;
using System.Text;

namespace PtHost.Reliability.Support;

/// <summary>Valid messages the fuzzers start from.</summary>
public static class Seeds
{
    public static readonly byte[][] Greetings =
    [
        SocksClient.Greeting(0x00), SocksClient.Greeting(0x02), SocksClient.Greeting(0x09), SocksClient.Greeting(0x80),
        SocksClient.Greeting(0x00, 0x02, 0x80, 0x09), SocksClient.Greeting(0x01, 0x03), SocksClient.Greeting([.. Enumerable.Range(0, 255).Select(i => (byte)i)]),
    ];

    public static readonly string[] SettingsJson =
    [
        "{}", "{\"destination\":\"192.0.2.1:80\"}", "{\"destination\":\"[2001:db8::1]:443\"}", "{\"destination\":null}",
        "{\"a\":[1,2.5,-3e7,true,false,null,{\"b\":\"\\u00e9\\ud83d\\ude00\"}]}", "{\"n\":12345678901234567890123}", "{\"s\":\"x\\\"y\\\\z\\n\"}",
    ];

    public static readonly byte[][] SettingsBlocks = [.. SettingsJson.Select(SocksClient.SettingsBlock), [0, 0, 0, 0]];

    public static readonly byte[][] UserPass =
    [
        SocksClient.UserPass("cert=abc;iat-mode=0", "\0"), SocksClient.UserPass("destination=127.0.0.1:80", ""),
        SocksClient.UserPass("a=b;", "c=d"), SocksClient.UserPass("k\\;=v\\=\\\\", ""), SocksClient.UserPass("", ""),
        SocksClient.UserPass("x", "=y"), SocksClient.UserPass(new string('k', 200) + "=v", new string('p', 255)),
    ];

    public static readonly byte[][] Requests =
    [
        SocksClient.ConnectIPv4(IPAddress.Loopback, 80), SocksClient.ConnectIPv4(IPAddress.Any, 0),
        SocksClient.ConnectIPv6(IPAddress.IPv6Loopback, 443), SocksClient.ConnectIPv6(IPAddress.IPv6Any, 0),
        SocksClient.ConnectIPv6(IPAddress.Parse("::ffff:192.0.2.1"), 8080),
        SocksClient.ConnectDomain("example.com", 443), SocksClient.ConnectDomain("localhost", 1),
        SocksClient.ConnectDomain(new string('a', 63) + "." + new string('b', 63) + ".example", 65535),
        SocksClient.ConnectDomain("example.com", 80, command: 2), SocksClient.ConnectDomain("example.com", 80, command: 3),
    ];

    public static readonly string[] PtArgStrings =
    [
        "", "cert=abc;iat-mode=0", "a=b;", "k\\;=v\\=\\\\", "destination=127.0.0.1:80", "x==y;z=", "\\==\\;", "é=ü;😀=😀",
    ];

    public static string ClientConfig(string extra = "") =>
        "{\"role\":\"client\",\"transports\":[\"plain\"],\"options\":{\"plain\":{\"serverAddress\":\"127.0.0.1:9\"}},\"exit-on-stdin-close\":true" + extra + "}";

    public static readonly string[] Configs =
    [
        ClientConfig(), ClientConfig(",\"proxylistenaddr\":\"127.0.0.1:0\",\"loglevel\":\"debug\",\"ptversion\":\"2,2.1\""),
        ClientConfig(",\"proxylistenaddr\":{\"plain\":\"[::1]:1080\"}"),
        "{\"role\":\"server\",\"transports\":[\"plain\"],\"allow\":[\"127.0.0.1\",\"10.0.0.0/8\",\"[::1]:443\"],\"exit-on-stdin-close\":false}",
        "{\"role\":\"server\",\"transports\":[\"plain\"],\"target\":\"127.0.0.1:80\",\"bindaddr\":{\"plain\":\"0.0.0.0:0\"},\"options\":{\"plain\":{\"advertise\":\"example.com:443\"}}}",
        "{\"role\":\"client\",\"transports\":[\"plain\",\"other_1\"],\"plugindir\":\"plugins\",\"state\":\"st\",\"options\":{\"plain\":null}}",
    ];

    public static readonly string[] Json = [.. SettingsJson, .. Configs, "[]", "0", "-0.0e-0", "\"\\ud800\\udc00\"", "[[[[[[[[1]]]]]]]]", "true", "null"];

    public static string Envelope(string extra = "") =>
        "{\"v\":1,\"mid\":7,\"cid\":\"969f0c70ab55203f\",\"exp\":4102444800,\"kind\":\"hello\"" + extra + "}";

    public static readonly string[] Envelopes =
    [
        Envelope(), Envelope(",\"re\":3,\"body\":{\"address\":\"127.0.0.1:1\"}"), Envelope(",\"sid\":\"de868a7ee99fafc6\",\"body\":[1,\"x\",null]"),
        "{\"v\":1,\"mid\":9223372036854775807,\"sid\":\"s\",\"cid\":\"c\",\"kind\":\"a.b-c\",\"exp\":0}",
    ];

    public static byte[] Preamble(string destination)
    {
        var d = Encoding.UTF8.GetBytes(destination);
        return [(byte)'P', (byte)'T', (byte)'P', 0x01, (byte)(d.Length >> 8), (byte)d.Length, .. d];
    }

    public static readonly byte[][] PlainPreambles =
    [
        Preamble("127.0.0.1:80"), Preamble(""), Preamble("[2001:db8::1]:443"), Preamble("example.com:443"),
        Preamble(new string('a', 256) + ":65535"), Preamble("localhost:1"),
    ];
}
