namespace PtHost.Contract;

/// <summary>A transport's <c>options</c> are unusable; reported as CMETHOD-ERROR/SMETHOD-ERROR at start-up.</summary>
public sealed class TransportOptionsException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A per-connection setting is unusable; the SOCKS CONNECT reply says so (0x13) and the session closes.</summary>
public sealed class SettingsException(string key, string problem) : Exception($"setting '{key}' {problem}")
{
    /// <summary>The offending key.</summary>
    public string Key { get; } = key;
}

/// <summary>Why a connection could not be made; the values are SOCKS5 reply codes (RFC 1928 §6).</summary>
public enum ConnectFailure : byte
{
    /// <summary>0x01 general SOCKS server failure.</summary>
    General = 0x01,
    /// <summary>0x02 connection not allowed by ruleset.</summary>
    NotAllowed = 0x02,
    /// <summary>0x03 network unreachable.</summary>
    NetworkUnreachable = 0x03,
    /// <summary>0x04 host unreachable (includes names that do not resolve).</summary>
    HostUnreachable = 0x04,
    /// <summary>0x05 connection refused.</summary>
    ConnectionRefused = 0x05,
    /// <summary>0x06 TTL expired: PtHost uses it for timeouts.</summary>
    TimedOut = 0x06,
    /// <summary>0x07 command not supported.</summary>
    CommandNotSupported = 0x07,
    /// <summary>0x08 address type not supported.</summary>
    AddressTypeNotSupported = 0x08,
}

/// <summary>A connection attempt failed for a reason the SOCKS reply can carry.</summary>
public sealed class TransportConnectException(ConnectFailure failure, string message, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>The reason, as a SOCKS5 reply code.</summary>
    public ConnectFailure Failure { get; } = failure;
}
