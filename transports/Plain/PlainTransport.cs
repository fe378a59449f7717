using PtHost.Contract;

namespace PtHost.Transports.Plain;

/// <summary>
/// The baseline and debugging transport (spec/plain.md): no obfuscation, no encryption. A short
/// preamble names the destination for a free server and returns the server's connect result.
/// </summary>
public sealed class PlainTransport : IPluggableTransport
{
    public string Name => "plain";

    public IClientFactory CreateClientFactory(TransportEnvironment context)
    {
        var options = PlainClientOptions.Parse(context.Options);
        if (options.Discover && !context.Signals.Available)
            throw new TransportOptionsException("plain option \"discover\" needs the SMESSAGE signal channel, which PT 1.0 does not have");
        return new PlainClient(context, options);
    }

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new PlainServer(context, PlainServerOptions.Parse(context.Options));
}
