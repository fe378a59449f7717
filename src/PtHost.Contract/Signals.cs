using System.Threading.Channels;
using Newtonsoft.Json.Linq;

namespace PtHost.Contract;

/// <summary>
/// Out-of-band messages between the client and server processes of one transport, carried by the
/// application as CMESSAGE/SMESSAGE lines (spec/ipc.md §6). Delivery is unreliable: messages may
/// be lost, late, duplicated or copied by hand. The host stamps ids, drops duplicates and expired
/// messages. A transport that needs an answer sends again (each send gets a new
/// <see cref="Signal.MessageId"/>) and accepts a reply to any of the ids it sent.
/// </summary>
public interface ISignalChannel
{
    /// <summary>This process's instance id (the client's <c>cid</c>; the server's <c>sid</c>).</summary>
    string InstanceId { get; }

    /// <summary>
    /// Writes a message line. On the server, <see cref="Signal.ClientId"/> addresses one client
    /// (null: every client). Returns the message id used.
    /// </summary>
    long Send(Signal signal);

    /// <summary>Messages from the peer process, oldest first (bounded; the oldest are dropped when full).</summary>
    ChannelReader<Signal> Incoming { get; }

    /// <summary>
    /// False when the process has no signal channel (PT 1.0 managed mode has no CMESSAGE/SMESSAGE):
    /// <see cref="Send"/> then writes nothing and nothing ever arrives. A transport that cannot work
    /// without signals throws <see cref="TransportOptionsException"/> at factory creation, saying so.
    /// </summary>
    bool Available => true;
}

/// <summary>One out-of-band message.</summary>
/// <param name="Kind">Transport-defined type, [a-z0-9.-]+.</param>
/// <param name="Body">Transport-defined JSON; null for none.</param>
public sealed record Signal(string Kind, JToken? Body)
{
    /// <summary>Sender's message id (positive, increasing per sender); set by the host when sending.</summary>
    public long MessageId { get; init; }

    /// <summary>The id of the message this one answers, or 0.</summary>
    public long ReplyTo { get; init; }

    /// <summary>The client instance: the sender of a CMESSAGE, the addressee of an SMESSAGE (null = all clients).</summary>
    public string? ClientId { get; init; }

    /// <summary>After this instant the receiver drops the message; null: the host's default lifetime.</summary>
    public DateTimeOffset? Expires { get; init; }
}
