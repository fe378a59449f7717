using PtHost.Transports.Zephyr;

namespace PtHost.Tests.Unit;

/// <summary>spec/zephyr.md §2–3: the 12-byte assignment and bind request.</summary>
public class ZephyrWireTests
{
    [Fact]
    public void Assignment_is_magic_then_length_4_then_the_zid_big_endian()
    {
        Assert.Equal(new byte[] { 0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 4, 0x12, 0x34, 0x56, 0x78 }, ZephyrWire.BuildAssignment(0x12345678));
    }

    [Fact]
    public void Bind_request_has_the_same_layout_naming_the_peer()
    {
        Assert.Equal(new byte[] { 0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff }, ZephyrWire.BuildBindRequest(int.MaxValue));
        Assert.Equal(new byte[] { 0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 4, 0, 0, 0, 0 }, ZephyrWire.BuildBindRequest(0));
    }

    [Fact]
    public void Zids_are_non_negative_32_bit_integers()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ZephyrWire.BuildAssignment(0x80000000));
        Assert.Throws<ArgumentOutOfRangeException>(() => ZephyrWire.WriteAssignment(new byte[11], 1));
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(1u)]
    [InlineData(0x00c0ffeeu)]
    [InlineData(0x7fffffffu)]
    public void Bind_request_round_trips(uint zid)
    {
        Assert.Equal(BindRequestError.None, ZephyrWire.ParseBindRequest(ZephyrWire.BuildBindRequest(zid), out uint parsed));
        Assert.Equal(zid, parsed);
        Assert.Equal(BindRequestError.None, ZephyrWire.ParseAssignment(ZephyrWire.BuildAssignment(zid), out parsed));
        Assert.Equal(zid, parsed);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Bind_request_with_any_wrong_magic_byte_is_refused(int index)
    {
        var message = ZephyrWire.BuildBindRequest(42);
        message[index] ^= 0x01;
        Assert.Equal(BindRequestError.WrongMagic, ZephyrWire.ParseBindRequest(message, out _));
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(3u)]
    [InlineData(5u)]
    [InlineData(0x04000000u)]
    [InlineData(0xffffffffu)]
    public void Bind_request_with_a_length_field_other_than_4_is_refused(uint length)
    {
        var message = ZephyrWire.BuildBindRequest(42);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(4), length);
        Assert.Equal(BindRequestError.WrongLength, ZephyrWire.ParseBindRequest(message, out _));
    }

    [Fact]
    public void Fewer_than_12_bytes_are_truncated()
    {
        Assert.Equal(BindRequestError.Truncated, ZephyrWire.ParseBindRequest(ZephyrWire.BuildBindRequest(42).AsSpan(0, 11), out _));
        Assert.Equal(BindRequestError.Truncated, ZephyrWire.ParseBindRequest([], out _));
    }

    [Fact]
    public void Bytes_after_the_first_12_are_not_part_of_the_bind_request()
    {
        byte[] message = [.. ZephyrWire.BuildBindRequest(7), 1, 2, 3];
        Assert.Equal(BindRequestError.None, ZephyrWire.ParseBindRequest(message, out uint zid));
        Assert.Equal(7u, zid);
    }

    [Fact]
    public void A_zid_with_the_high_bit_set_parses_and_is_left_to_the_relay_to_refuse_as_unknown()
    {
        byte[] message = [0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 4, 0x80, 0, 0, 1];
        Assert.Equal(BindRequestError.None, ZephyrWire.ParseBindRequest(message, out uint zid));
        Assert.Equal(0x80000001u, zid);
    }
}
