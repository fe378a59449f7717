using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Transports.External;

namespace PtHost.Tests.Unit;

/// <summary>Options of the external transport (spec/external.md §4.2): checked once, at start-up.</summary>
public class ExternalOptionsTests
{
    [Fact]
    public void The_method_defaults_to_the_name_after_external_()
    {
        var o = ExternalOptions.Parse("external_obfs4", JObject.Parse("""{"exec":"/bin/sh","args":["-c","x"],"serverAddress":"192.0.2.7:443"}"""), client: true);
        Assert.Equal(("/bin/sh", "obfs4", "192.0.2.7:443"), (o.Exec, o.Method, o.ServerAddress!.ToString()));
        Assert.Equal(["-c", "x"], o.Args);
        Assert.Equal(ExternalOptions.DefaultStartTimeout, o.StartTimeout);
        Assert.Equal("meek", ExternalOptions.Parse("external", JObject.Parse("""{"exec":"/bin/sh","method":"meek"}"""), client: true).Method);
    }

    [Theory]
    [InlineData("external", null, "options.external: is required: {\"exec\"")]
    [InlineData("external", """{"exec":"/bin/sh"}""", "options.external.method: is required")]
    [InlineData("external_x", """{}""", "options.external_x.exec: is required")]
    [InlineData("external_x", """{"exec":"/nonexistent/pt"}""", "options.external_x.exec: /nonexistent/pt does not exist")]
    [InlineData("external_x", """{"exec":"/bin/sh","args":"-v"}""", "options.external_x.args: must be an array of strings")]
    [InlineData("external_x", """{"exec":"/bin/sh","args":["-v",1]}""", "options.external_x.args[1]: must be a string")]
    [InlineData("external_x", """{"exec":"/bin/sh","method":"a-b"}""", "options.external_x.method: must be a PT 1.0 transport name")]
    [InlineData("external_x", """{"exec":"/bin/sh","serverAddress":"nowhere"}""", "options.external_x.serverAddress: must be \"host:port\"")]
    [InlineData("external_x", """{"exec":"/bin/sh","serverOptions":{}}""", "options.external_x.serverOptions: unknown key")]
    [InlineData("external_x", """{"exec":"/bin/sh","startTimeout":0}""", "options.external_x.startTimeout: must be a number of seconds")]
    [InlineData("external_x", """{"exec":"/bin/sh","maxRestarts":-1}""", "options.external_x.maxRestarts: must be an integer from 0 to 1000")]
    [InlineData("external_x", """{"exec":"/bin/sh","bogus":1}""", "options.external_x.bogus: unknown key (known: exec, args, method, serverAddress, startTimeout, maxRestarts)")]
    public void Bad_client_options_are_start_up_errors_naming_the_key(string name, string? json, string message)
    {
        var e = Assert.Throws<OptionsException>(() => ExternalOptions.Parse(name, json is null ? null : JToken.Parse(json), client: true));
        Assert.StartsWith(message, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"exec":"/bin/sh","serverAddress":"192.0.2.7:443"}""", "options.external_x.serverAddress: unknown key")]
    [InlineData("""{"exec":"/bin/sh","serverOptions":{"iat-mode":0}}""", "options.external_x.serverOptions.iat-mode: must be a string")]
    public void Bad_server_options_are_start_up_errors_naming_the_key(string json, string message)
    {
        var e = Assert.Throws<OptionsException>(() => ExternalOptions.Parse("external_x", JToken.Parse(json), client: false));
        Assert.StartsWith(message, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("external", true)]
    [InlineData("external_obfs4", true)]
    [InlineData("external_", false)]
    [InlineData("externalx", false)]
    [InlineData("plain", false)]
    public void External_names(string name, bool external) => Assert.Equal(external, ExternalTransport.IsExternalName(name));
}
