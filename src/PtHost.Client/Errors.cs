using System.Net.Sockets;

namespace PtHost.Client;

/// <summary>Base of the adapter's own errors (spec/adapters.md §5.6); also <c>generate-config</c> failing.</summary>
public class PtHostException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>pthost exited 78 or 73 during start-up (spec/adapters.md §2.6): the message is pthost's stderr line.</summary>
public sealed class PtHostConfigurationException(string message, string? key, int exitCode, string stderr)
    : PtHostException(message)
{
    /// <summary>The configuration key pthost named (<c>config key '&lt;key&gt;'</c>), when it named one.</summary>
    public string? Key { get; } = key;
    public int ExitCode { get; } = exitCode;
    public string Stderr { get; } = stderr;
}

/// <summary>A <c>CMETHOD-ERROR</c>/<c>SMETHOD-ERROR</c> line (spec/adapters.md §2.6).</summary>
public sealed class TransportStartException(string transport, string reason, string keyword)
    : PtHostException($"{keyword} {transport}: {reason}")
{
    public string Transport { get; } = transport;
    public string Reason { get; } = reason;
}

/// <summary>pthost ended by itself, or the adapter was disposed: raised by every later call.</summary>
public sealed class PtHostExitedException(string message, int? exitCode, string stderr) : PtHostException(message)
{
    /// <summary>The exit status; null when pthost is still being ended by the adapter.</summary>
    public int? ExitCode { get; } = exitCode;
    public string Stderr { get; } = stderr;
}

/// <summary>
/// A SOCKS5 failure reply (spec/ipc.md §5.6, spec/adapters.md §2.6). <see cref="SocketException.SocketErrorCode"/>
/// is the reply's errno counterpart; <see cref="Reply"/> is the code itself (0xFF: no acceptable method).
/// </summary>
public sealed class SocksException(byte reply) : SocketException((int)ErrorFor(reply))
{
    public byte Reply { get; } = reply;

    public override string Message => $"SOCKS5 reply 0x{Reply:x2}: {Describe(Reply)}";

    public static string Describe(byte reply) => reply switch
    {
        0x01 => "general failure",
        0x02 => "not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "timed out",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        0x10 => "settings too large",
        0x11 => "settings timeout",
        0x12 => "settings not parseable",
        0x13 => "settings invalid",
        0xFF => "no acceptable method",
        _ => "unknown reply",
    };

    /// <summary>spec/adapters.md §2.6's errno column, as .NET's SocketError.</summary>
    public static SocketError ErrorFor(byte reply) => reply switch
    {
        0x02 => SocketError.AccessDenied,
        0x03 => SocketError.NetworkUnreachable,
        0x04 => SocketError.HostUnreachable,
        0x05 => SocketError.ConnectionRefused,
        0x06 or 0x11 => SocketError.TimedOut,
        0x07 => SocketError.OperationNotSupported,
        0x08 => SocketError.AddressFamilyNotSupported,
        0x10 => SocketError.MessageSize,
        0x12 or 0x13 => SocketError.InvalidArgument,
        0xFF => SocketError.ProtocolNotSupported,
        _ => SocketError.ConnectionAborted,
    };
}

/// <summary>A TURN error response (spec/turn.md); 403 is a peer the server process refused.</summary>
public sealed class TurnException(int code, string reason) : PtHostException($"TURN error {code}: {reason}")
{
    public int Code { get; } = code;

    /// <summary>The error response's reason phrase.</summary>
    public string Reason { get; } = reason;
}
