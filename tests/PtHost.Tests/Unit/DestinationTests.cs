using PtHost.Contract;

namespace PtHost.Tests.Unit;

public class DestinationTests
{
    [Theory]
    [InlineData("127.0.0.1:80", "127.0.0.1", 80)]
    [InlineData("[::1]:443", "::1", 443)]
    [InlineData("example.org:8080", "example.org", 8080)]
    public void Parses_host_and_port(string text, string host, int port)
    {
        var d = Destination.Parse(text);
        Assert.Equal(host, d.Host);
        Assert.Equal(port, d.Port);
        Assert.Equal(text, d.ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData("noport")]
    [InlineData("::1:80")]
    [InlineData("[::1]")]
    [InlineData("host:65536")]
    [InlineData("host:-1")]
    [InlineData("a b:1")]
    public void Rejects_malformed(string text) => Assert.False(Destination.TryParse(text, out _));

    [Theory]
    [InlineData("0.0.0.0:0", true)]
    [InlineData("[::]:0", true)]
    [InlineData("[::0]:0", true)]
    [InlineData("127.0.0.1:0", false)]
    [InlineData("0.0.0.0:1", false)]
    public void Unspecified_is_the_PT2_bound_marker(string text, bool unspecified) =>
        Assert.Equal(unspecified, Destination.Parse(text).IsUnspecified);
}
