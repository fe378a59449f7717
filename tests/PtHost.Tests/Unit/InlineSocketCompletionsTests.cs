using PtHost.Plugins;

namespace PtHost.Tests.Unit;

/// <summary>spec/ipc.md §7, "Threads": which transport lists run socket continuations inline.</summary>
public class InlineSocketCompletionsTests
{
    [Theory]
    [InlineData(true, "plain")]
    [InlineData(false, "plain", "zephyr")]
    [InlineData(false, "zephyr")]
    [InlineData(false, "jet")]
    [InlineData(false, "asport")]
    [InlineData(false, "rud")]
    [InlineData(false, "external_obfs4")]
    [InlineData(false, "plain", "a_plugin_not_loaded_yet")]
    [InlineData(false)]
    public void Only_a_list_of_transports_that_all_declare_it_qualifies(bool expected, params string[] transports) =>
        Assert.Equal(expected, InlineSocketCompletions.SafeFor(transports, new TransportRegistry()));
}
