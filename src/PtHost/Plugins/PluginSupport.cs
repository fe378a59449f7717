using System.Diagnostics.CodeAnalysis;

namespace PtHost.Plugins;

/// <summary>
/// Whether this build of pthost loads managed plugins (spec/ipc.md §8.5). The framework-dependent
/// build does; the NativeAOT build cannot (no assembly loading, no JIT), so its project sets the
/// switch to false and the compiler drops the loading code (a feature switch, trimmed as a constant).
/// </summary>
internal static class PluginSupport
{
    private const string Switch = "PtHost.Plugins.IsSupported";

    // IL4000: there is no framework property that is false when trimming, so the analyzer cannot
    // prove this guard; the trimmer and the AOT compiler treat a FeatureGuard(RequiresUnreferencedCode)
    // property as false (and PtHost.csproj sets the switch to false for PublishAot besides).
#pragma warning disable IL4000
    [FeatureSwitchDefinition(Switch)]
    [FeatureGuard(typeof(RequiresUnreferencedCodeAttribute))]
    public static bool IsSupported => !AppContext.TryGetSwitch(Switch, out bool on) || on;
#pragma warning restore IL4000

    /// <summary>The problem with <c>plugindir</c> in a build without plugin support (spec/ipc.md §8.5).</summary>
    public const string Unsupported =
        "this pthost is the NativeAOT build, which cannot load managed plugins; the framework-dependent build loads them (dotnet publish src/PtHost, or the dotnet tool pthost)";
}
