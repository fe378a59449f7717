using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>The key exchanges (spec/rud.md §4): initiating (§4.2: Hello, Exchange, first contact and deferred) and responding (§4.3: challenges, tokens, Complete), with the limits on unconfirmed exchanges.</summary>
public sealed partial class RudEndpoint
{
    // ---- initiating (§4.2) ----

    /// <summary>
    /// Opens a connection to <paramref name="remote"/>. With <paramref name="serverStaticKey"/> the
    /// immediate exchange is used (deferred if the responder asks); without it, first contact.
    /// Throws <see cref="TimeoutException"/> when the handshake does not complete in time.
    /// </summary>
    public async Task<RudConnection> ConnectAsync(IPEndPoint remote, byte[]? serverStaticKey, CancellationToken cancellationToken)
    {
        RudConnection conn;
        lock (Gate)
        {
            long now = Now();
            var peer = remote.Serialize();
            if (peer.Family != _socket.AddressFamily) throw new ArgumentException($"{remote} is not reachable from a socket of family {_socket.AddressFamily}");
            conn = new RudConnection(this, initiator: true, NewLocalId(), peer, now) { RekeyInterval = Options.RekeyInterval };
            // The ephemeral key with an Elligator 2 representative (§4.6); the packet's length drawn from [1200, 1350].
            conn.EphemeralPrivate = new byte[X25519.KeySize];
            conn.EphemeralPublic = new byte[X25519.KeySize];
            conn.Representative = new byte[Elligator2.Size];
            Elligator2.GenerateKey(conn.EphemeralPrivate, conn.EphemeralPublic, conn.Representative);
            conn.HandshakePacket = new byte[RudWire.InitiatorHandshakeLength()];
            conn.Mezzanine = new byte[RudWire.MezzaninePlainSize];
            BinaryPrimitives.WriteInt64BigEndian(conn.Mezzanine, WallMs());
            if (_initiatorStaticPublic is not null)
            {
                conn.Mezzanine[8] = RudWire.MezzanineInitiatorKey;
                _initiatorStaticPublic.CopyTo(conn.Mezzanine, 9);
            }
            if (serverStaticKey is not null)
            {
                if (serverStaticKey.Length != X25519.KeySize) throw new ArgumentException("the server key must be 32 bytes", nameof(serverStaticKey));
                conn.Mode = ExchangeMode.Immediate;
                conn.Hp = ProtectionFor(serverStaticKey);
                if (!SetServerKey(conn, serverStaticKey)) throw new ArgumentException("the server key is not a usable X25519 public key", nameof(serverStaticKey));
                BuildInitiatorMessage(conn, complete: false, []);
            }
            else
            {
                conn.Mode = ExchangeMode.FirstContact;
                conn.Hp = FirstContactProtection;
                _initiatorProtections.TryAdd(FirstContactProtection.Key, FirstContactProtection);
                conn.HandshakeLength = RudWire.WriteHello(conn.HandshakePacket, conn.LocalId);
                ProtectHandshake(conn.Hp, conn.HandshakePacket, fromInitiator: true);
            }
            _connections.Add(conn.LocalId, conn);
            conn.HandshakeDeadline = now + Options.HandshakeTimeout.Ticks / 10;
            RestartResend(conn, now);
        }
        try
        {
            await conn.Established.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            return conn;
        }
        catch (OperationCanceledException)
        {
            lock (Gate) conn.FailHandshake("cancelled");
            throw;
        }
    }

    /// <summary>The obfuscation of responder key <paramref name="key"/> (§3.3), made on first use. Caller holds <see cref="Gate"/>.</summary>
    private HeaderProtection ProtectionFor(byte[] key)
    {
        var id = EphemeralKeyId.From(key);
        if (!_initiatorProtections.TryGetValue(id, out var hp)) _initiatorProtections.Add(id, hp = new HeaderProtection(key));
        return hp;
    }

    private bool SetServerKey(RudConnection conn, byte[] key)
    {
        var es = new byte[X25519.KeySize];
        if (!X25519.Agree(conn.EphemeralPrivate, key, es)) return false;
        if (Options.InitiatorStaticPrivateKey is { } mine)
        {
            // §5.5: ss = X25519(initiator static private, responder static public).
            var ss = new byte[X25519.KeySize];
            if (!X25519.Agree(mine, key, ss)) return false;
            conn.Ss = ss;
            conn.ProofKey = RudKeys.InitiatorProofKey(es, ss, conn.EphemeralPublic, key, _initiatorStaticPublic);
        }
        conn.ServerStatic = key;
        conn.Es = es;
        conn.MezzanineKey = RudKeys.MezzanineKey(es, conn.EphemeralPublic, key);
        return true;
    }

    /// <summary>Builds the Exchange (no token) or initiator Complete into the connection's handshake packet (§4.1).</summary>
    private void BuildInitiatorMessage(RudConnection conn, bool complete, ReadOnlySpan<byte> token)
    {
        var s = conn.HandshakePacket.AsSpan();
        int at = RudWire.WriteExchangePlaintext(s, complete, conn.LocalId, conn.Representative, token);
        Span<byte> nonce = stackalloc byte[RudKeys.NonceSize];
        RudKeys.MezzanineNonce(nonce, complete ? (byte)1 : (byte)0);
        Span<byte> aad = stackalloc byte[RudWire.MezzanineAadSize];
        RudWire.MezzanineAad(s, aad);
        using var aead = new AesGcm(conn.MezzanineKey!, RudKeys.TagSize);
        aead.Encrypt(nonce, conn.Mezzanine, s.Slice(at, RudWire.MezzaninePlainSize), s.Slice(at + RudWire.MezzaninePlainSize, RudKeys.TagSize), aad);
        // The initiator's proof (§5.5), or random bytes in its place.
        var proof = s.Slice(at + RudWire.MezzanineSize, RudWire.InitiatorProofSize);
        if (conn.ProofKey is { } k) RudKeys.InitiatorProof(k, complete ? (byte)1 : (byte)0, s.Slice(at, RudWire.MezzanineSize), proof);
        else RandomNumberGenerator.Fill(proof);
        conn.HandshakeLength = s.Length;
        ProtectHandshake(conn.Hp, s, fromInitiator: true);
    }

    private void RestartResend(RudConnection conn, long now)
    {
        conn.HandshakeInterval = 500_000;
        conn.HandshakeResendAt = now + conn.HandshakeInterval;
        conn.HandshakeSentTime = now;
        conn.HandshakeResent = false;
        SendTo(conn.HandshakePacket.AsSpan(0, conn.HandshakeLength), conn.Peer);
        RequestFlush(conn);
    }

    private void OnInitiatorHandshake(RudConnection conn, ReadOnlySpan<byte> p, long now)
    {
        byte type = p[RudWire.IdSize];
        if (type == PacketType.Challenge)
        {
            if (conn.Mode != ExchangeMode.FirstContact || conn.ServerStatic is not null
                || !RudWire.TryParseChallengeOrDefer(p, challenge: true, out int keyAt, out int tokenAt, out int tokenLength))
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            var key = p.Slice(keyAt, X25519.KeySize).ToArray();
            if (!SetServerKey(conn, key)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
            conn.Hp = ProtectionFor(key);
            BuildInitiatorMessage(conn, complete: true, p.Slice(tokenAt, tokenLength));
            RestartResend(conn, now);
        }
        else if (type == PacketType.Defer)
        {
            if (conn.ServerStatic is null || !RudWire.TryParseChallengeOrDefer(p, challenge: false, out _, out int tokenAt, out int tokenLength))
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            if (conn.Mode == ExchangeMode.Immediate) conn.Mode = ExchangeMode.Deferred;
            BuildInitiatorMessage(conn, complete: true, p.Slice(tokenAt, tokenLength));
            RestartResend(conn, now);
        }
        else if (type == PacketType.ResponderComplete)
        {
            if (conn.ServerStatic is null || p.Length < RudWire.ResponderCompleteSize)
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            Span<byte> responderEphemeral = stackalloc byte[X25519.KeySize];
            Elligator2.Decode(p[^RudWire.RepresentativeTail..], responderEphemeral);
            Span<byte> ee = stackalloc byte[X25519.KeySize];
            if (!X25519.Agree(conn.EphemeralPrivate, responderEphemeral, ee)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
            var (i, r) = RudKeys.TrafficSecrets(conn.Es, ee, conn.EphemeralPublic, responderEphemeral, conn.ServerStatic, conn.Ss);
            Span<byte> aad = stackalloc byte[RudWire.ResponderCompleteAadSize];
            p[..RudWire.HandshakeHeaderSize].CopyTo(aad);
            p[^RudWire.RepresentativeTail..].CopyTo(aad[RudWire.HandshakeHeaderSize..]);
            using (var check = new PacketProtection(r, 0))
            {
                Span<byte> plain = stackalloc byte[RudWire.ResponderCompletePlainSize];
                if (!check.Open(0, aad, p.Slice(RudWire.HandshakeHeaderSize, RudWire.ResponderCompletePlainSize + RudKeys.TagSize), plain))
                { Counters.Increment(ref Counters.AuthFailed); return; }
                conn.RemoteId = RudWire.ReadId(plain);
            }
            conn.Establish(i, r, now, conn.HandshakeResent ? 0 : now - conn.HandshakeSentTime);
            conn.EphemeralPrivate = null;
            RequestFlush(conn);
        }
        else Counters.Increment(ref Counters.Malformed);
    }

    // ---- responding (§4.3) ----

    private void OnHello(ReadOnlySpan<byte> p, SocketAddress from, long now)
    {
        if (!Options.AllowFirstContact || !RudWire.TryParseHello(p, out ulong initiatorId)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        Span<byte> token = stackalloc byte[TokenIssuer.TokenSize];
        _tokens.Issue(ToEndPoint(from), initiatorId, WallMs(), token);
        var reply = new byte[RudWire.ChallengeOrDeferLength(challenge: true, TokenIssuer.TokenSize, RudWire.ResponderPadding())];
        RudWire.WriteChallengeOrDefer(reply, initiatorId, _staticPublic, token);
        ProtectHandshake(FirstContactProtection, reply, fromInitiator: false);
        SendTo(reply, from);
        Counters.Increment(ref Counters.ChallengesSent);
    }

    private void SendDefer(ulong initiatorId, SocketAddress from)
    {
        Span<byte> token = stackalloc byte[TokenIssuer.TokenSize];
        _tokens.Issue(ToEndPoint(from), initiatorId, WallMs(), token);
        Span<byte> reply = stackalloc byte[RudWire.ChallengeOrDeferLength(challenge: false, TokenIssuer.TokenSize, RudWire.ResponderPadding())];
        RudWire.WriteChallengeOrDefer(reply, initiatorId, [], token);
        ProtectHandshake(_hp!, reply, fromInitiator: false);
        SendTo(reply, from);
        Counters.Increment(ref Counters.DefersSent);
    }

    /// <summary>
    /// An Exchange or initiator Complete (§4.3). Runs on the receive thread without the endpoint's lock:
    /// the lock is taken for the state checks (steps 3, 4 and the rate limits) and to create the connection
    /// (steps 7, 8), never around the key agreements, so data packets and timers of every other connection
    /// do not wait for them.
    /// </summary>
    private void OnExchange(ReadOnlySpan<byte> p, SocketAddress from)
    {
        if (!RudWire.TryParseExchange(p, out bool complete, out ulong initiatorId, out int tokenAt, out int tokenLength, out int mezzAt))
        { Counters.Increment(ref Counters.HandshakeDropped); return; }
        // Repeats are byte for byte: the representative names the exchange for step 3; the replay cache
        // (step 8) takes the key it decodes to (§4.6), which other representatives may also encode.
        var representative = p[^RudWire.RepresentativeTail..];
        var keyId = EphemeralKeyId.From(representative);
        var prefix = SourcePrefix.From(from);
        lock (Gate)
        {
            long now = Now();
            _handshakeLoad.OnExchange(now);
            if (complete)
            {
                switch (_tokens.Check(p.Slice(tokenAt, tokenLength), ToEndPoint(from), initiatorId, WallMs()))
                {
                    case TokenCheck.Invalid: Counters.Increment(ref Counters.TokenInvalid); return;
                    case TokenCheck.Expired:
                        Counters.Increment(ref Counters.TokenExpired);
                        SendDefer(initiatorId, from);
                        return;
                }
            }
            // A repeated Exchange of a live, unconfirmed connection: our Complete was lost (step 3).
            if (ResendComplete(keyId, from)) return;
            if (!complete && (Options.Challenge == ChallengePolicy.Always
                || (Options.Challenge == ChallengePolicy.Load && (_unconfirmed > Options.LoadThreshold || _handshakeLoad.Raised(now)))))
            {
                SendDefer(initiatorId, from);
                return;
            }
            if (!_handshakeLoad.TryTake(prefix, now)) { Counters.Increment(ref Counters.HandshakeRateLimited); return; }
        }

        // Steps 5 and 6, and the responder's half of §5.3, outside the lock.
        Span<byte> eph = stackalloc byte[X25519.KeySize];
        Elligator2.Decode(representative, eph);
        Span<byte> es = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(Options.StaticPrivateKey, eph, es)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        var km = RudKeys.MezzanineKey(es, eph, _staticPublic);
        Span<byte> nonce = stackalloc byte[RudKeys.NonceSize];
        RudKeys.MezzanineNonce(nonce, complete ? (byte)1 : (byte)0);
        Span<byte> mezz = stackalloc byte[RudWire.MezzaninePlainSize];
        try
        {
            using var aead = new AesGcm(km, RudKeys.TagSize);
            Span<byte> aad = stackalloc byte[RudWire.MezzanineAadSize];
            RudWire.MezzanineAad(p, aad);
            aead.Decrypt(nonce, p.Slice(mezzAt, RudWire.MezzaninePlainSize), p.Slice(mezzAt + RudWire.MezzaninePlainSize, RudKeys.TagSize), mezz, aad);
        }
        catch (AuthenticationTagMismatchException)
        {
            Counters.Increment(ref Counters.AuthFailed);
            lock (Gate) _handshakeLoad.OnFailure(Now());
            return;
        }
        long stamp = BinaryPrimitives.ReadInt64BigEndian(mezz);
        if (Math.Abs(WallMs() - stamp) > (long)ReplayWindow.TotalMilliseconds || (mezz[8] & ~RudWire.MezzanineInitiatorKey) != 0) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        // The initiator's static key (§5.5): an initiator that proves none, proves one not authorized, or fails its
        // proof gets no answer, exactly as one that does not know our static key (step 6).
        Span<byte> ss = stackalloc byte[X25519.KeySize];
        bool withKey = (mezz[8] & RudWire.MezzanineInitiatorKey) != 0;
        if (withKey)
        {
            var initiatorStatic = mezz.Slice(9, X25519.KeySize);
            bool ok = (_authorized is null || _authorized.Contains(EphemeralKeyId.From(initiatorStatic)))
                && X25519.Agree(Options.StaticPrivateKey, initiatorStatic, ss)
                && RudKeys.CheckInitiatorProof(RudKeys.InitiatorProofKey(es, ss, eph, _staticPublic, initiatorStatic), complete ? (byte)1 : (byte)0,
                    p.Slice(mezzAt, RudWire.MezzanineSize), p.Slice(mezzAt + RudWire.MezzanineSize, RudWire.InitiatorProofSize));
            if (!ok) { Unauthorized(); return; }
        }
        else if (_authorized is not null) { Unauthorized(); return; }
        var sePrivate = new byte[X25519.KeySize];
        Span<byte> sePublic = stackalloc byte[X25519.KeySize];
        Span<byte> seRepresentative = stackalloc byte[Elligator2.Size];
        Elligator2.GenerateKey(sePrivate, sePublic, seRepresentative);
        var uId = EphemeralKeyId.From(eph);
        Span<byte> ee = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(sePrivate, eph, ee)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        var (i, r) = RudKeys.TrafficSecrets(es, ee, eph, sePublic, _staticPublic, withKey ? ss : []);

        lock (Gate)
        {
            long now = Now();
            if (ResendComplete(keyId, from)) return; // a copy of this Exchange was accepted meanwhile
            if (_replay.Refuses(uId, stamp)) { Counters.Increment(ref Counters.Replayed); return; }
            if (_connections.Count >= Options.MaxConnections || (_sources.TryGetValue(prefix, out var known) && known.Connections >= ConnectionsPerSource))
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            var source = Source(from);

            var conn = new RudConnection(this, initiator: false, NewLocalId(), Copy(from), now, source.Rings)
            {
                Source = source,
                RemoteId = initiatorId,
                Mode = complete ? ExchangeMode.Deferred : ExchangeMode.Immediate,
                RekeyInterval = Options.RekeyInterval,
                ReplayKey = keyId,
            };
            conn.Establish(i, r, now);
            // header | sealed (responder id, ticket length) | padding | representative (§4.1).
            var reply = new byte[RudWire.ResponderCompleteSize + RudWire.ResponderPadding()];
            RudWire.WriteHandshakeHeader(reply, initiatorId, PacketType.ResponderComplete);
            seRepresentative.CopyTo(reply.AsSpan(reply.Length - RudWire.RepresentativeTail));
            Span<byte> aad = stackalloc byte[RudWire.ResponderCompleteAadSize];
            reply.AsSpan(0, RudWire.HandshakeHeaderSize).CopyTo(aad);
            seRepresentative.CopyTo(aad[RudWire.HandshakeHeaderSize..]);
            Span<byte> plain = stackalloc byte[RudWire.ResponderCompletePlainSize];
            RudWire.WriteId(plain, conn.LocalId);
            plain[RudWire.IdSize] = 0; // ticket length (§7.5)
            conn.SealResponderComplete(aad, plain, reply.AsSpan(RudWire.HandshakeHeaderSize, RudWire.ResponderCompletePlainSize + RudKeys.TagSize));
            conn.Hp = _hp!;
            ProtectHandshake(_hp!, reply, fromInitiator: false);
            conn.ResponderCompleteBytes = reply;
            _connections.Add(conn.LocalId, conn);
            source.Connections++;
            _replay.Add(uId, stamp);
            _unconfirmedByKey[keyId] = conn;
            _unconfirmed++;
            Counters.Increment(ref Counters.HandshakesAccepted);
            SendTo(reply, from);
            if (!_incoming.Writer.TryWrite(conn)) conn.CloseLocked(1, "accept queue full", sendClose: true);
        }
    }

    /// <summary>An initiator refused by §5.5: counted, and counted as an authentication failure for the load policy (§4.4).</summary>
    private void Unauthorized()
    {
        Counters.Increment(ref Counters.Unauthorized);
        lock (Gate) _handshakeLoad.OnFailure(Now());
    }

    /// <summary>Sends the stored Complete again when <paramref name="keyId"/> is that of a live, unconfirmed connection (§4.3 step 3). Caller holds <see cref="Gate"/>.</summary>
    private bool ResendComplete(EphemeralKeyId keyId, SocketAddress from)
    {
        if (!_unconfirmedByKey.TryGetValue(keyId, out var existing) || existing.IsClosed || existing.ResponderCompleteBytes is not { } again) return false;
        SendTo(again, from);
        Counters.Increment(ref Counters.CompletesResent);
        return true;
    }

    internal void OnConfirmed(RudConnection conn)
    {
        conn.Confirmed = true;
        conn.ResponderCompleteBytes = null;
        _unconfirmed--;
        _unconfirmedByKey.Remove(conn.ReplayKey);
    }

    internal void Forget(RudConnection conn)
    {
        if (!_connections.Remove(conn.LocalId)) return;
        if (!conn.IsInitiator && !conn.Confirmed)
        {
            _unconfirmed--;
            _unconfirmedByKey.Remove(conn.ReplayKey);
        }
        if (conn.Source is { } source && --source.Connections == 0 && source.Rings.Used == 0)
            _sources.Remove(source.Prefix);
    }
}
