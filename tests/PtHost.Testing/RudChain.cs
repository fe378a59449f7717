using System.Net;
using Newtonsoft.Json.Linq;

namespace PtHost.Testing;

/// <summary>A rud server (free, allow 127.0.0.1) and client pthost configured from <c>pthost generate-config rud</c> (spec/rud.md §12).</summary>
public static class RudChain
{
    /// <param name="relayFor">Where the client sends its datagrams, given the server's address (a lossy relay in front of it).</param>
    public static async Task<PtChain> StartAsync(Action<JObject>? editClient = null, Func<IPEndPoint, IPEndPoint>? relayFor = null, Action<JObject>? editServer = null)
    {
        var generated = await PtChain.GenerateConfigAsync("rud");
        var server = (JObject)generated["server"]!;
        editServer?.Invoke(server);
        var serverConfig = PtChain.FreeServerOf("rud", server);
        serverConfig["loglevel"] = "info";
        return await PtChain.StartAsync(serverConfig, serverEp =>
        {
            var client = (JObject)generated["client"]!;
            client["serverAddress"] = (relayFor?.Invoke(serverEp) ?? serverEp).ToString();
            editClient?.Invoke(client);
            return PtChain.ClientOf("rud", client);
        });
    }

    /// <summary>The server's static public key from its SMETHOD line (<c>ARGS:key=…</c>, PT escaping removed): what the bridge line gives anyone.</summary>
    public static byte[] ServerKey(PtChain chain)
    {
        string smethod = chain.ServerStartup.Single(l => l.StartsWith("SMETHOD rud ", StringComparison.Ordinal));
        return Convert.FromBase64String(smethod.Split("key=")[1].Split([' ', ','])[0].Replace("\\", "", StringComparison.Ordinal));
    }
}
