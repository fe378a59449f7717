using PtHost.Contract;

namespace PtHost.Embedded;

/// <summary>
/// The transports PtHost carries, by name: the executable's registry and the in-process host both start
/// from this list (spec/ipc.md §3.2 <c>transports</c>).
/// </summary>
public static class BuiltInTransports
{
    /// <summary>Each built-in transport's name and constructor.</summary>
    public static IReadOnlyList<(string Name, Func<IPluggableTransport> Create)> All { get; } =
    [
        ("plain", () => new PtHost.Transports.Plain.PlainTransport()),
        ("zephyr", () => new PtHost.Transports.Zephyr.ZephyrTransport()),
        ("jet", () => new PtHost.Transports.Jet.JetTransport()),
        ("asport", () => new PtHost.Transports.Asport.AsportTransport()),
        ("rud", () => new PtHost.Transports.Rud.RudTransport()),
    ];

    /// <summary>The relay services the built-in transports contribute: <c>pthost relay NAME</c> (spec/ipc.md §2.4).</summary>
    public static IReadOnlyList<IRelayService> Relays { get; } =
    [
        new PtHost.Transports.Zephyr.ZephyrRelayService(),
        new PtHost.Transports.Jet.JetRelayService(),
        new PtHost.Transports.Asport.AsportRelayService(),
    ];

    /// <summary>
    /// Commands of their own that the built-in transports contribute, in a relay service's shape: <c>pthost NAME</c>
    /// (spec/ipc.md §2.4). Names first, so that the executable builds a command only when it is invoked.
    /// </summary>
    public static IReadOnlyList<(string Name, Func<IRelayService> Create)> Commands { get; } =
    [
        ("asport-client", () => new PtHost.Transports.Asport.AsportClientService()),
    ];

    /// <summary><c>external</c> and <c>external_&lt;method&gt;</c>: a PT 1.0 program run as a child (spec/external.md §4.1).</summary>
    public static bool IsExternal(string name) => PtHost.Transports.External.ExternalTransport.IsExternalName(name);

    /// <summary>The external transport for <paramref name="name"/> (the executable only: it needs a process of its own).</summary>
    public static IPluggableTransport CreateExternal(string name) => new PtHost.Transports.External.ExternalTransport(name);
}
