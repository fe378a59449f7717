using System.Net;

namespace PtHost.Transparent;

/// <summary>A client process's front end for one transport: SOCKS5's or a transparent mode's (spec/ipc.md §12).</summary>
public interface IFrontEnd : IAsyncDisposable
{
    IPEndPoint LocalEndPoint { get; }

    void Start();

    /// <summary>Stops accepting; open sessions end when <paramref name="drain"/> fires.</summary>
    Task StopAsync(CancellationToken drain);
}
