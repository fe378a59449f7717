using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Hosting;

/// <summary>
/// The dialer every transport gets (TransportEnvironment.Dialer): the upstream proxy and outbound
/// bind addresses of the configuration applied (spec/ipc.md §10.5).
/// </summary>
internal static class OutboundDialer
{
    /// <summary>
    /// A <see cref="ProxyDialer"/> through the upstream proxy (client role only), or a
    /// <see cref="DirectDialer"/>; both bind the outbound addresses for non-loopback destinations
    /// (spec/external.md §2, §3). The proxy was validated before start (<see cref="ValidateProxy"/>).
    /// </summary>
    public static INetworkDialer Create(PtConfig config)
    {
        var bind = new OutboundBindAddresses(config.OutboundBindV4, config.OutboundBindV6);
        var proxy = config.Role == Role.Client && config.UpstreamProxy is { } uri ? UpstreamProxy.Parse(uri) : null;
        return ProxyDialer.Create(proxy, bind);
    }

    /// <summary>Why a TOR_PT_PROXY value cannot be used (the PROXY-ERROR text, spec/external.md §2.1), or null when it can.</summary>
    public static string? ValidateProxy(string uri) => UpstreamProxy.TryParse(uri, out _, out string? error) ? null : error;

    /// <summary>
    /// A free server's onward connection: only to addresses <see cref="AllowList.Refuse"/> admits, each
    /// resolved address judged before it is connected (spec/ipc.md §3.4).
    /// </summary>
    public static ValueTask<Stream> ConnectAllowedAsync(INetworkDialer dialer, Destination destination, AllowList allow, CancellationToken ct) =>
        dialer is DirectDialer direct
            ? direct.ConnectAsync(destination, a => allow.Refuse(a, destination.Port), ct)
            : throw new InvalidOperationException("a free server dials directly");
}
