using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Runtime.Loader;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Plugins;

/// <summary>
/// Transports by name: the built-in ones, and those found in the <c>plugindir</c> directory
/// (spec/ipc.md §8). Plugin assemblies load into one <see cref="AssemblyLoadContext"/> per
/// directory; the contract and its dependencies are shared with the host so interfaces match.
/// </summary>
public sealed class TransportRegistry
{
    private readonly Dictionary<string, Func<IPluggableTransport>> _factories = new(StringComparer.Ordinal);

    public TransportRegistry()
    {
        foreach (var (name, create) in PtHost.Embedded.BuiltInTransports.All) Register(name, create);
    }

    public IEnumerable<string> Names => _factories.Keys;

    /// <summary>The relay services the built-in transports contribute: <c>pthost relay NAME</c> (spec/ipc.md §2.4).</summary>
    public static IReadOnlyList<IRelayService> Relays { get; } = [.. PtHost.Embedded.BuiltInTransports.Relays, new PtHost.Rendezvous.RendezvousRelayService()];

    /// <summary>Top-level commands the built-in transports contribute (<c>pthost asport-client</c>, spec/ipc.md §2.4).</summary>
    public static IReadOnlyList<(string Name, Func<IRelayService> Create)> Commands => PtHost.Embedded.BuiltInTransports.Commands;

    public void Register(string name, Func<IPluggableTransport> factory)
    {
        if (!_factories.TryAdd(name, factory)) throw new InvalidOperationException($"transport \"{name}\" is registered twice");
    }

    /// <summary>
    /// The transport named <paramref name="name"/>; <c>external</c> and every <c>external_&lt;method&gt;</c>
    /// is the external transport (spec/external.md §4.1). It is not in <see cref="Names"/>: it cannot run
    /// without options, so a PT 1.0 <c>*</c> does not start it.
    /// </summary>
    public IPluggableTransport? Create(string name) =>
        _factories.TryGetValue(name, out var f) ? f()
        : PtHost.Embedded.BuiltInTransports.IsExternal(name) ? PtHost.Embedded.BuiltInTransports.CreateExternal(name)
        : null;

    /// <summary>Loads every assembly in <paramref name="directory"/> that references the contract and registers its transports.</summary>
    /// <remarks>Only where <see cref="PluginSupport.IsSupported"/>: a plugin's types are found by reflection, which needs its metadata whole.</remarks>
    [RequiresUnreferencedCode("Plugins are loaded from files and their transport types found by reflection (spec/ipc.md §8.2).")]
    public IReadOnlyList<string> LoadPlugins(string directory, ILogger log)
    {
        var loaded = new List<string>();
        var context = new PluginLoadContext(directory);
        foreach (string path in Directory.EnumerateFiles(directory, "*.dll").Order(StringComparer.Ordinal))
        {
            if (!ReferencesContract(path)) continue;
            Assembly assembly;
            try { assembly = context.LoadFromAssemblyPath(Path.GetFullPath(path)); }
            catch (Exception e) when (e is BadImageFormatException or IOException or UnauthorizedAccessException)
            {
                log.LogWarning("plugin {Path} not loaded: {Error}", path, e.Message);
                continue;
            }
            Type[] types;
            try { types = assembly.GetExportedTypes(); }
            catch (Exception e) when (e is ReflectionTypeLoadException or FileNotFoundException or FileLoadException)
            {
                log.LogWarning("plugin {Path} not loaded: {Error}", path, e.Message);
                continue;
            }
            foreach (var type in types)
            {
                if (type.IsAbstract || !typeof(IPluggableTransport).IsAssignableFrom(type) || type.GetConstructor(Type.EmptyTypes) is null) continue;
                string name;
                try { name = ((IPluggableTransport)Activator.CreateInstance(type)!).Name; }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // Foreign code: whatever it throws costs this type only.
                    log.LogWarning("plugin transport {Type} in {Path} failed to construct: {Error}", type.FullName, path, (e as TargetInvocationException)?.InnerException?.Message ?? e.Message);
                    continue;
                }
                if (!Configuration.PtConfig.IsTransportName(name) || _factories.ContainsKey(name) || PtHost.Transports.External.ExternalTransport.IsExternalName(name))
                {
                    log.LogWarning("plugin transport {Type} in {Path} ignored: name \"{Name}\" is invalid or taken", type.FullName, path, name);
                    continue;
                }
                var t = type;
                Register(name, () => (IPluggableTransport)Activator.CreateInstance(t)!);
                loaded.Add(name);
                log.LogInformation("plugin transport \"{Name}\" loaded from {Path}", name, path);
            }
        }
        return loaded;
    }

    private static bool ReferencesContract(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            using var pe = new PEReader(stream);
            if (!pe.HasMetadata) return false;
            var md = pe.GetMetadataReader();
            foreach (var handle in md.AssemblyReferences)
                if (md.GetString(md.GetAssemblyReference(handle).Name) == typeof(IPluggableTransport).Assembly.GetName().Name) return true;
            return false;
        }
        catch (Exception e) when (e is BadImageFormatException or IOException or UnauthorizedAccessException) { return false; }
    }

    [RequiresUnreferencedCode("Loads plugin assemblies from files (spec/ipc.md §8.2).")]
    private sealed class PluginLoadContext(string directory) : AssemblyLoadContext("pthost-plugins:" + directory)
    {
        private static readonly HashSet<string> Shared = new(StringComparer.Ordinal)
        {
            typeof(IPluggableTransport).Assembly.GetName().Name!,
            typeof(Newtonsoft.Json.Linq.JToken).Assembly.GetName().Name!,
            typeof(ILogger).Assembly.GetName().Name!,
        };

        protected override Assembly? Load(AssemblyName name)
        {
            if (name.Name is null || Shared.Contains(name.Name)) return null; // the host's copy
            string candidate = Path.Combine(directory, name.Name + ".dll");
            return File.Exists(candidate) ? LoadFromAssemblyPath(Path.GetFullPath(candidate)) : null;
        }
    }
}
