using System.Net.Sockets;
using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary>The step both peers share: joining the relay (§7.3). The TLS of §7.4 is <see cref="PtHost.Net.Tls.PinnedTls"/>.</summary>
internal static class ZephyrSession
{
    /// <summary>Connects to a relay and reads the 12-byte assignment; returns the stream and the own zid.</summary>
    public static async Task<(Stream Stream, uint Zid)> JoinRelayAsync(INetworkDialer dialer, Destination relay, TimeSpan timeout, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        var stream = await dialer.ConnectTcpAsync(relay, limit.Token).ConfigureAwait(false);
        try
        {
            if (stream is NetworkStream ns) ns.Socket.NoDelay = true;
            byte[] assignment = new byte[ZephyrWire.MessageLength];
            await stream.ReadExactlyAsync(assignment, limit.Token).ConfigureAwait(false);
            var error = ZephyrWire.ParseAssignment(assignment, out uint zid);
            if (error != BindRequestError.None || zid > ZephyrWire.MaxZid)
                throw new TransportConnectException(ConnectFailure.General, $"relay {relay} sent no valid assignment ({error})");
            return (stream, zid);
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or OperationCanceledException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            if (e is OperationCanceledException && ct.IsCancellationRequested) throw;
            throw new TransportConnectException(e is OperationCanceledException ? ConnectFailure.TimedOut : ConnectFailure.HostUnreachable,
                $"relay {relay}: no assignment: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }
}
