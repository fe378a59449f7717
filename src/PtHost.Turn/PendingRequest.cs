using System.Buffers.Binary;
using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>A copy of the request's identity for answering later (after an await).</summary>
internal sealed class PendingRequest(StunMessage request)
{
    public readonly int Method = request.Method;
    public readonly byte[] TransactionId = request.TransactionId.ToArray();
    public readonly bool Fingerprint = request.HasFingerprint;

    public void Send(TurnClient client, byte[] key, int code, string? reason, Action<PendingWriter>? attributes = null)
    {
        byte[] buffer = new byte[TurnServer.ResponseBuffer];
        var w = new StunWriter(buffer, Method, code == 0 ? StunClass.Success : StunClass.Error, TransactionId);
        if (code != 0) w.AddErrorCode(code, reason);
        var pw = new PendingWriter();
        attributes?.Invoke(pw);
        foreach (var (type, value) in pw.Attributes) w.Add(type, value);
        w.AddString(StunAttribute.Software, TurnServer.Software);
        w.AddIntegrity(key);
        if (Fingerprint) w.AddFingerprint();
        client.Send(w.Written);
        LastResponse = w.Written.ToArray();
    }

    public byte[]? LastResponse { get; private set; }
}

/// <summary>Attributes added to a response built after an await.</summary>
internal sealed class PendingWriter
{
    public readonly List<(ushort, byte[])> Attributes = [];
    public void AddXorAddress(ushort type, PeerAddress address, ReadOnlySpan<byte> transactionId)
    {
        byte[] value = new byte[20];
        int n = Stun.WriteXorAddress(value, address, transactionId);
        Attributes.Add((type, value[..n]));
    }
    public void AddUInt32(ushort type, uint value)
    {
        byte[] v = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(v, value);
        Attributes.Add((type, v));
    }
    public void Add(ushort type, byte[] value) => Attributes.Add((type, value));
}
