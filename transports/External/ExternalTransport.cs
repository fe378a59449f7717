using PtHost.Contract;

namespace PtHost.Transports.External;

/// <summary>
/// Hosts an existing PT 1.0 transport program (spec/external.md §4): pthost runs it as a managed
/// child with the PT 1.0 environment and puts its own SOCKS5 front end (client) or target (server)
/// around it. Registered as <c>external</c> and as every name <c>external_&lt;method&gt;</c>.
/// </summary>
public sealed class ExternalTransport : IPluggableTransport
{
    /// <summary>Names <c>external_&lt;method&gt;</c> are this transport; the method defaults to the suffix.</summary>
    public const string Prefix = "external_";

    public ExternalTransport() : this("external") { }

    public ExternalTransport(string name) => Name = name;

    /// <summary>True for <c>external</c> and <c>external_&lt;x&gt;</c>.</summary>
    public static bool IsExternalName(string name) => name == "external" || (name.StartsWith(Prefix, StringComparison.Ordinal) && name.Length > Prefix.Length);

    public string Name { get; }

    public IClientFactory CreateClientFactory(TransportEnvironment context) =>
        new ExternalClient(context, ExternalOptions.Parse(context.Name, context.Options, client: true));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new ExternalServer(context);
}
