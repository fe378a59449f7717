namespace PtHost.Transports.Rud;

/// <summary>What an endpoint dropped, and why (spec/rud.md §10), plus loss-recovery events. Thread-safe.</summary>
public sealed class RudCounters
{
    public long Malformed, UnknownId, AuthFailed, Replayed, TokenInvalid, TokenExpired, HandshakeDropped, NoKeys, InternalErrors;
    public long ChallengesSent, DefersSent, HandshakesAccepted, HandshakesFailed, CompletesResent;
    public long PacketsLost, ProbeTimeouts, CongestionEvents, LossesTolerated, SpuriousLosses, RetransmissionsReceived, Migrations, StreamsRefused, DatagramsDropped, SendErrors;
    public long PathMtuProbes, PathMtuRaised, ReassemblyRefused, HandshakeRateLimited, PathChallengesSent, PathChallengesLimited, PathValidationsFailed, Unauthorized;

    public void Increment(ref long field) => Interlocked.Increment(ref field);

    /// <summary>Every counter by name.</summary>
    public IReadOnlyDictionary<string, long> Snapshot() => new Dictionary<string, long>
    {
        ["malformed"] = Volatile.Read(ref Malformed),
        ["unknownId"] = Volatile.Read(ref UnknownId),
        ["authFailed"] = Volatile.Read(ref AuthFailed),
        ["replayed"] = Volatile.Read(ref Replayed),
        ["tokenInvalid"] = Volatile.Read(ref TokenInvalid),
        ["tokenExpired"] = Volatile.Read(ref TokenExpired),
        ["handshakeDropped"] = Volatile.Read(ref HandshakeDropped),
        ["noKeys"] = Volatile.Read(ref NoKeys),
        ["internalErrors"] = Volatile.Read(ref InternalErrors),
        ["challengesSent"] = Volatile.Read(ref ChallengesSent),
        ["defersSent"] = Volatile.Read(ref DefersSent),
        ["handshakesAccepted"] = Volatile.Read(ref HandshakesAccepted),
        ["handshakesFailed"] = Volatile.Read(ref HandshakesFailed),
        ["completesResent"] = Volatile.Read(ref CompletesResent),
        ["packetsLost"] = Volatile.Read(ref PacketsLost),
        ["probeTimeouts"] = Volatile.Read(ref ProbeTimeouts),
        ["congestionEvents"] = Volatile.Read(ref CongestionEvents),
        ["lossesTolerated"] = Volatile.Read(ref LossesTolerated),
        ["spuriousLosses"] = Volatile.Read(ref SpuriousLosses),
        ["retransmissionsReceived"] = Volatile.Read(ref RetransmissionsReceived),
        ["migrations"] = Volatile.Read(ref Migrations),
        ["streamsRefused"] = Volatile.Read(ref StreamsRefused),
        ["datagramsDropped"] = Volatile.Read(ref DatagramsDropped),
        ["sendErrors"] = Volatile.Read(ref SendErrors),
        ["pathMtuProbes"] = Volatile.Read(ref PathMtuProbes),
        ["pathMtuRaised"] = Volatile.Read(ref PathMtuRaised),
        ["reassemblyRefused"] = Volatile.Read(ref ReassemblyRefused),
        ["handshakeRateLimited"] = Volatile.Read(ref HandshakeRateLimited),
        ["pathChallengesSent"] = Volatile.Read(ref PathChallengesSent),
        ["pathChallengesLimited"] = Volatile.Read(ref PathChallengesLimited),
        ["pathValidationsFailed"] = Volatile.Read(ref PathValidationsFailed),
        ["unauthorized"] = Volatile.Read(ref Unauthorized),
    };

    /// <summary>Packets dropped because of what they contained (every reason of §10).</summary>
    public long Dropped => Volatile.Read(ref Malformed) + Volatile.Read(ref UnknownId) + Volatile.Read(ref AuthFailed) + Volatile.Read(ref Replayed)
        + Volatile.Read(ref TokenInvalid) + Volatile.Read(ref TokenExpired) + Volatile.Read(ref HandshakeDropped) + Volatile.Read(ref NoKeys) + Volatile.Read(ref HandshakeRateLimited) + Volatile.Read(ref Unauthorized);
}
