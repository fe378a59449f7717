using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;
using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary>Why the internal link refused a connection (spec/zephyr.md §8.4), for the log and the metrics.</summary>
public enum LinkRefusal
{
    None,
    Timeout,
    Closed,
    Header,
    Mac,
    Clock,
    Replay,
    Route,
    Duplicate,
    Limit,
}

/// <summary>
/// The relay-to-relay link of a Zephyr cluster (spec/zephyr.md §8): zid tags, the meeting instance of a pair,
/// and the 72-byte authenticated forward header that precedes a forwarded connection's bytes.
/// </summary>
public sealed class ZephyrLink
{
    /// <summary>The forward header's size (§8.3).</summary>
    public const int HeaderLength = 72;
    /// <summary>Bits 27–30 of a zid name the instance that assigned it (§8.1); 0: no cluster.</summary>
    public const int TagShift = 27;
    public const int MaxInstance = 15;
    /// <summary>§8.4: a header older or newer than this is refused; a nonce is remembered twice as long.</summary>
    public static readonly TimeSpan ClockWindow = TimeSpan.FromSeconds(30);
    /// <summary>§8.4: the whole header must arrive within this.</summary>
    public static readonly TimeSpan HeaderTimeout = TimeSpan.FromSeconds(5);
    /// <summary>§8.4: link connections waiting for their header at once; more are closed at once.</summary>
    public const int MaxPending = 64;

    private static ReadOnlySpan<byte> Magic => "ZLNK"u8;
    private const byte Version = 1;

    private readonly byte[] _key;
    private readonly string _peersFile;
    private readonly Lock _lock = new();
    private readonly Dictionary<UInt128, long> _nonces = [];
    private Dictionary<int, IPEndPoint> _peers = [];
    private DateTime _peersStamp;

    public ZephyrLink(int instance, byte[] key, string peersFile)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(instance, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(instance, MaxInstance);
        if (key.Length < 32) throw new ArgumentException("the link secret must have at least 32 bytes", nameof(key));
        Instance = instance;
        _key = key;
        _peersFile = peersFile;
        ReadPeers(); // a bad file is a configuration error at start (exit 78); later ones keep the last good map
    }

    /// <summary>This instance's number, 1–15 (§8.1).</summary>
    public int Instance { get; }

    /// <summary>The instance that assigned <paramref name="zid"/>: 0 for an untagged zid (§8.1).</summary>
    public static int Tag(uint zid) => (int)(zid >> TagShift) & MaxInstance;

    /// <summary>A fresh zid of this instance: its tag in bits 27–30, 27 random bits below (§8.1).</summary>
    public uint Draw(ReadOnlySpan<byte> random) => ((uint)Instance << TagShift) | (BinaryPrimitives.ReadUInt32BigEndian(random) & ((1u << TagShift) - 1));

    /// <summary>
    /// §8.2: the instance where zids <paramref name="a"/> and <paramref name="b"/> are joined: the owner of the smaller
    /// when their lowest bits are equal, of the larger otherwise — the same answer from both sides, spread evenly.
    /// </summary>
    public static int Meeting(uint a, uint b) => Tag(((a ^ b) & 1) == 0 ? Math.Min(a, b) : Math.Max(a, b));

    /// <summary>The link address of instance <paramref name="instance"/>, from the peers file (re-read when it changes, §8.5).</summary>
    public IPEndPoint? Peer(int instance)
    {
        try { ReadPeers(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OptionsException) { } // keep the last good map
        lock (_lock) return _peers.GetValueOrDefault(instance);
    }

    private void ReadPeers()
    {
        var stamp = File.GetLastWriteTimeUtc(_peersFile);
        lock (_lock) if (stamp == _peersStamp && _peers.Count > 0) return;
        var r = OptionsReader.Parse(File.ReadAllText(_peersFile));
        var map = new Dictionary<int, IPEndPoint>();
        foreach (string key in r.Keys)
        {
            if (!int.TryParse(key, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) || n is < 1 or > MaxInstance)
                throw r.Fail(key, "is not an instance number from 1 to 15");
            map[n] = r.EndPoint(key) ?? throw r.Fail(key, "must be \"ip:port\"");
        }
        lock (_lock)
        {
            _peers = map;
            _peersStamp = stamp;
        }
    }

    /// <summary>§8.3: the forward header for a connection with zid <paramref name="origin"/> that named <paramref name="target"/>.</summary>
    public byte[] BuildHeader(uint origin, uint target)
    {
        var h = new byte[HeaderLength];
        Magic.CopyTo(h);
        h[4] = Version;
        BinaryPrimitives.WriteInt64BigEndian(h.AsSpan(8), DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        RandomNumberGenerator.Fill(h.AsSpan(16, 16));
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(32), origin);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(36), target);
        HMACSHA256.HashData(_key, h.AsSpan(0, 40), h.AsSpan(40));
        return h;
    }

    /// <summary>§8.4: checks a received header; on success the forwarded connection's zid and the zid it named.</summary>
    public LinkRefusal Verify(ReadOnlySpan<byte> h, out uint origin, out uint target)
    {
        origin = target = 0;
        if (h.Length != HeaderLength || !h[..4].SequenceEqual(Magic) || h[4] != Version || h[5] != 0 || h[6] != 0 || h[7] != 0) return LinkRefusal.Header;
        Span<byte> mac = stackalloc byte[32];
        HMACSHA256.HashData(_key, h[..40], mac);
        if (!CryptographicOperations.FixedTimeEquals(mac, h[40..])) return LinkRefusal.Mac;
        long sent = BinaryPrimitives.ReadInt64BigEndian(h[8..]), now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        if (Math.Abs(now - sent) > (long)ClockWindow.TotalMilliseconds) return LinkRefusal.Clock;
        origin = BinaryPrimitives.ReadUInt32BigEndian(h[32..]);
        target = BinaryPrimitives.ReadUInt32BigEndian(h[36..]);
        int from = Tag(origin);
        if (origin > ZephyrWire.MaxZid || target > ZephyrWire.MaxZid || from == 0 || from == Instance || Tag(target) != Instance || Meeting(origin, target) != Instance)
            return LinkRefusal.Route;
        var nonce = BinaryPrimitives.ReadUInt128BigEndian(h[16..]);
        lock (_lock)
        {
            if (!_nonces.TryAdd(nonce, now)) return LinkRefusal.Replay;
        }
        return LinkRefusal.None;
    }

    /// <summary>Forgets nonces older than twice the clock window (the relay's sweep calls it).</summary>
    public void ForgetOldNonces()
    {
        long cut = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() - 2 * (long)ClockWindow.TotalMilliseconds;
        lock (_lock)
            foreach (var (nonce, seen) in _nonces)
                if (seen < cut) _nonces.Remove(nonce);
    }
}
