using Microsoft.Extensions.Logging;
using PtHost.Configuration;
using PtHost.Net.Signals;

namespace PtHost.Ipc;

/// <summary>The executable's signal envelopes (spec/ipc.md §6): the shared rules of <see cref="SignalEnvelopes"/>, written as CMESSAGE/SMESSAGE lines.</summary>
public sealed class SignalRouter(Role role, IpcWriter writer, ILogger<SignalRouter> log, TimeProvider? time = null, bool available = true)
    : SignalEnvelopes(role == Role.Server, role == Role.Server ? writer.Smessage : writer.Cmessage, log, time, available)
{
    public Role Role { get; } = role;
}
