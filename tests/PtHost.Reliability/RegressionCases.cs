using System.Buffers;
using PtHost.Reliability.Support;
using PtHost.Socks;

namespace PtHost.Reliability;

/// <summary>
/// Inputs the fuzzers turned up or that sit on a boundary, kept as named cases (hex). None of them crashed
/// a parser in this suite's runs; each checks the invariants of <see cref="ParserFuzzTests.Check"/>.
/// </summary>
public class RegressionCases
{
    [Theory]
    [InlineData("greeting, NMETHODS 255, methods all 01", "05FF" + "01010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101")]
    [InlineData("greeting, version 4", "040100")]
    [InlineData("greeting, zero methods", "0500")]
    public void Greeting(string name, string hex) => Assert.NotNull(name + ParserFuzzTests.Check(ParserFuzzTests.Greeting, Convert.FromHexString(hex), new Random(1), [0xFF]));

    [Theory]
    [InlineData("settings length 2^31 (negative as int)", "80000000")]
    [InlineData("settings length 65537", "00010001")]
    [InlineData("settings length 65536, incomplete", "000100007B7D")]
    [InlineData("settings lone surrogate escape", "000000087B2261223A225C7564383030227D")]
    [InlineData("settings number beyond double range", "00000014" + "7B226E223A31323334353637383930313233343536374539303132337D")]
    [InlineData("settings invalid UTF-8", "00000004" + "7B22FF7D")]
    public void Settings(string name, string hex) => Assert.NotNull(name + ParserFuzzTests.Check(ParserFuzzTests.Settings, Convert.FromHexString(hex), new Random(2), [0x10, 0x12]));

    [Theory]
    [InlineData("userpass, PLEN 1 with NUL password", "010161" + "0100")]
    [InlineData("userpass, version 5", "05016101" + "62")]
    [InlineData("userpass, ULEN 255 incomplete", "01FF6161")]
    [InlineData("userpass, invalid UTF-8 in password", "0100" + "01FF")]
    public void UserPass(string name, string hex) => Assert.NotNull(name + ParserFuzzTests.Check(ParserFuzzTests.UserPass, Convert.FromHexString(hex), new Random(3), [0x01]));

    [Theory]
    [InlineData("request, ATYP 03 with length 0", "05010003" + "00" + "0050")]
    [InlineData("request, numeric last label 127.1", "05010003" + "05" + "3132372E31" + "0050")]
    [InlineData("request, ATYP 02", "0501000200000000")]
    [InlineData("request, version 4 on the first byte", "04")]
    [InlineData("request, UDP ASSOCIATE to IPv6", "05030004" + "00000000000000000000000000000001" + "01BB")]
    [InlineData("request, domain with invalid UTF-8", "05010003" + "02C328" + "0050")]
    public void Request(string name, string hex) => Assert.NotNull(name + ParserFuzzTests.Check(ParserFuzzTests.Request, Convert.FromHexString(hex), new Random(4), [0x01, 0x04, 0x07, 0x08]));

    [Theory]
    [InlineData("plain preamble, port with a leading zero (allowed: 1–5 digits)", "5054500100" + "0F" + "6578616D706C652E636F6D3A303433")]
    [InlineData("plain preamble, length 263", "50545001" + "0107")]
    [InlineData("plain preamble, 1.2.3.4. (trailing dot on a quad)", "50545001" + "000A" + "312E322E332E342E3A31")]
    public void PlainPreamble(string name, string hex) => Assert.NotNull(name + ParserFuzzTests.CheckPreamble(Convert.FromHexString(hex)));
}
