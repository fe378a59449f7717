using System.Net;
using System.Net.Http.Headers;
using Newtonsoft.Json.Linq;
using PtHost.Net.Signals;

namespace PtHost.Testing;

/// <summary>A running <c>pthost relay rendezvous</c> and what its LISTEN line says (spec/rendezvous.md §6).</summary>
public sealed class RendezvousProcess : IAsyncDisposable
{
    private RendezvousProcess(PtProcess process, IPEndPoint endPoint, bool https, string? pin)
    {
        Process = process;
        EndPoint = endPoint;
        Https = https;
        Pin = pin;
    }

    public PtProcess Process { get; }
    public IPEndPoint EndPoint { get; }
    public bool Https { get; }
    /// <summary>The HTTPS certificate's pin from the LISTEN line; null over HTTP.</summary>
    public string? Pin { get; }
    public string Url => $"{(Https ? "https" : "http")}://{EndPoint}";

    /// <summary>Starts the relay on 127.0.0.1:0 (or <paramref name="listen"/>, for a restart on the port an earlier one reported).</summary>
    public static async Task<RendezvousProcess> StartAsync(string listen = "127.0.0.1:0", params string[] options)
    {
        var p = PtProcess.StartPthost(["relay", "rendezvous", "--listen", listen, "--loglevel", "debug", .. options]);
        try
        {
            string line = await p.ReadLineAsync();
            Assert.StartsWith("LISTEN rendezvous ", line, StringComparison.Ordinal);
            var parts = line.Split(' ');
            string? pin = parts.Length > 4 && parts[4].StartsWith("pin=", StringComparison.Ordinal) ? parts[4][4..] : null;
            return new RendezvousProcess(p, IPEndPoint.Parse(parts[2]), parts[3] == "https", pin);
        }
        catch
        {
            await p.DisposeAsync();
            throw;
        }
    }

    /// <summary>The configuration's <c>"signals"</c> object for this rendezvous (spec/rendezvous.md §7.1).</summary>
    public JObject Signals(string secret)
    {
        var o = new JObject { ["rendezvous"] = Url, ["secret"] = secret };
        if (Pin is not null) o["pin"] = Pin;
        return o;
    }

    /// <summary>An HTTP client of the rendezvous API (the test plays a peer or an attacker), optionally from another loopback source address.</summary>
    public HttpClient HttpClient(IPAddress? source = null, string? token = null)
    {
        var handler = new SocketsHttpHandler { UseProxy = false, MaxConnectionsPerServer = int.MaxValue };
        if (source is not null)
            handler.ConnectCallback = async (ctx, ct) =>
            {
                var s = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
                s.Bind(new IPEndPoint(source, 0));
                await s.ConnectAsync(ctx.DnsEndPoint.Host, ctx.DnsEndPoint.Port, ct);
                return new System.Net.Sockets.NetworkStream(s, ownsSocket: true);
            };
        var http = new HttpClient(handler) { BaseAddress = new Uri(Url + "/"), Timeout = TimeSpan.FromSeconds(60) };
        if (token is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return http;
    }

    /// <summary>A fresh secret (16 bytes, base64url).</summary>
    public static string NewSecret() => RendezvousKeys.NewSecret();

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}
