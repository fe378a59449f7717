namespace PtHost.Transports.Plain;

/// <summary>
/// Signal kinds of the plain transport (spec/plain.md §3). On its TCP connection plain carries the
/// session preamble of spec/session.md and nothing else (<see cref="PtHost.Contract.SessionPreamble"/>).
/// </summary>
internal static class PlainSignals
{
    public const string Hello = "hello";
    public const string Server = "server";
}
