"""HPACK (protocols/hpack.py) against RFC 7541's examples and, differentially, the `hpack` package.

Every block the python-hyper encoder can produce (each field representation, Huffman or not,
table size updates, eviction) must decode to what its own decoder says, with the same dynamic
table after it; every malformed block must fail in both.
"""

from __future__ import annotations

import hpack as oracle
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from aserve.protocols.hpack import (
    STATIC_TABLE,
    Decoder,
    HpackError,
    encode_field,
    encode_status,
    huffman_decode,
)

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def dehex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def table(decoder: Decoder) -> list[tuple[bytes, bytes]]:
    """The dynamic table, newest entry first (as RFC 7541's examples list it)."""
    return [decoder._field(62 + i) for i in range(len(decoder._table))]


def oracle_table(decoder: oracle.Decoder) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in decoder.header_table.dynamic_entries]


# -- RFC 7541, Appendix C ------------------------------------------------------------------


def test_c2_single_fields() -> None:
    decoder = Decoder()
    assert decoder.decode(
        dehex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")
    ) == [(b"custom-key", b"custom-header")]
    assert table(decoder) == [(b"custom-key", b"custom-header")]
    assert decoder.table_size == 55
    decoder = Decoder()
    assert decoder.decode(dehex("040c 2f73 616d 706c 652f 7061 7468")) == [
        (b":path", b"/sample/path")
    ]
    assert decoder.decode(dehex("1008 7061 7373 776f 7264 0673 6563 7265 74")) == [
        (b"password", b"secret")
    ]
    assert decoder.decode(b"\x82") == [(b":method", b"GET")]
    assert table(decoder) == []


REQUEST_1 = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"www.example.com"),
]
REQUEST_2 = [*REQUEST_1, (b"cache-control", b"no-cache")]
REQUEST_3 = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/index.html"),
    (b":authority", b"www.example.com"),
    (b"custom-key", b"custom-value"),
]
REQUEST_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    (
        [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ],
        164,
    ),
]


@pytest.mark.parametrize(
    "blocks",
    [
        pytest.param(
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            id="C.3 plain",
        ),
        pytest.param(
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
            id="C.4 Huffman",
        ),
    ],
)
def test_c3_c4_requests(blocks: list[str]) -> None:
    decoder = Decoder()
    for block, expected, (entries, size) in zip(
        blocks, [REQUEST_1, REQUEST_2, REQUEST_3], REQUEST_TABLES, strict=True
    ):
        assert decoder.decode(dehex(block)) == expected
        assert table(decoder) == entries
        assert decoder.table_size == size


DATE_1 = (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT")
DATE_2 = (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT")
LOCATION = (b"location", b"https://www.example.com")
PRIVATE = (b"cache-control", b"private")
COOKIE = (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
RESPONSES = [
    (
        [(b":status", b"302"), PRIVATE, DATE_1, LOCATION],
        [LOCATION, DATE_1, PRIVATE, (b":status", b"302")],
        222,
    ),
    (
        [(b":status", b"307"), PRIVATE, DATE_1, LOCATION],
        [(b":status", b"307"), LOCATION, DATE_1, PRIVATE],
        222,
    ),
    (
        [(b":status", b"200"), PRIVATE, DATE_2, LOCATION, (b"content-encoding", b"gzip"), COOKIE],
        [COOKIE, (b"content-encoding", b"gzip"), DATE_2],
        215,
    ),
]


@pytest.mark.parametrize(
    "blocks",
    [
        pytest.param(
            [
                """4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
                2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
                6c65 2e63 6f6d""",
                "4803 3330 37c1 c0bf",
                """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
                54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
                5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
                3d31""",
            ],
            id="C.5 plain",
        ),
        pytest.param(
            [
                """4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
                "4883 640e ffc1 c0bf",
                """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
                77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
                9587 3160 65c0 03ed 4ee5 b106 3d50 07""",
            ],
            id="C.6 Huffman",
        ),
    ],
)
def test_c5_c6_responses_with_eviction(blocks: list[str]) -> None:
    decoder = Decoder(max_table_size=256)
    for block, (expected, entries, size) in zip(blocks, RESPONSES, strict=True):
        assert decoder.decode(dehex(block)) == expected
        assert table(decoder) == entries
        assert decoder.table_size == size


# -- differential: the hpack package as the oracle -----------------------------------------

# Names and values drawn from the static table (so indexed names and whole indexed fields
# occur), or arbitrary (so do literal names, long lengths with continuation bytes, Huffman).
static_name = st.sampled_from([name for name, _ in STATIC_TABLE])
static_value = st.sampled_from([value for _, value in STATIC_TABLE])
any_bytes = st.binary(min_size=0, max_size=300)
name = st.one_of(static_name, st.binary(min_size=1, max_size=40))
value = st.one_of(static_value, any_bytes)
field = st.tuples(name, value, st.booleans())  # the bool: never indexed
block = st.tuples(
    st.lists(field, max_size=12),
    st.lists(st.tuples(name, value), max_size=3),  # literals without indexing, after them
    st.booleans(),  # Huffman
    st.one_of(st.none(), st.integers(min_value=0, max_value=4096)),  # table size update
)


@settings(max_examples=100, deadline=None)
@given(st.lists(block, min_size=1, max_size=8))
def test_blocks_decode_as_the_oracle_decodes_them(blocks: list) -> None:
    encoder = oracle.Encoder()
    reference = oracle.Decoder()
    reference.max_header_list_size = 1 << 30
    ours = Decoder(max_list_size=1 << 30)
    for fields, unindexed, huffman, new_size in blocks:
        if new_size is not None:
            encoder.header_table_size = new_size  # the next block begins with the update
        tuples = [
            oracle.NeverIndexedHeaderTuple(n, v) if never else oracle.HeaderTuple(n, v)
            for n, v, never in fields
        ]
        # (The oracle's encoder never writes the "without indexing" form: ours does.)
        data = encoder.encode(tuples, huffman=huffman) + b"".join(
            encode_field(n, v) for n, v in unindexed
        )
        expected = [(bytes(n), bytes(v)) for n, v in reference.decode(data, raw=True)]
        assert ours.decode(data) == expected
        assert table(ours) == oracle_table(reference)
        assert ours.table_size == reference.header_table._current_size


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_huffman_decodes_what_the_oracle_encodes(text: bytes) -> None:
    encoded = HUFFMAN.encode(text)
    assert huffman_decode(encoded, 0, len(encoded)) == text
    # And from the middle of a buffer, as a string inside a block is.
    padded = b"\xff" + encoded + b"\x00"
    assert huffman_decode(padded, 1, 1 + len(encoded)) == text


def test_every_symbol_decodes() -> None:
    text = bytes(range(256))
    encoded = HUFFMAN.encode(text)
    assert huffman_decode(encoded, 0, len(encoded)) == text


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(b"\xff\xff\xff\xff", id="EOS (30 ones) in the string"),
        pytest.param(HUFFMAN.encode(b"a")[:-1] + b"\xff", id="padding of 8 bits or more"),
        pytest.param(b"\x00", id="padding that is not the EOS prefix"),  # '0' (00000) then 000
        pytest.param(b"\x18", id="padding of zeros after a code"),  # a (00011), 000
    ],
)
def test_bad_huffman_is_refused(encoded: bytes) -> None:
    with pytest.raises(HpackError):
        huffman_decode(encoded, 0, len(encoded))
    with pytest.raises(oracle.HPACKDecodingError):
        oracle.Decoder().decode(b"\x04" + bytes((0x80 | len(encoded),)) + encoded)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x80", id="index 0"),
        pytest.param(b"\xbe", id="index past the (empty) dynamic table"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\x01", id="integer too large"),
        pytest.param(b"\xff", id="integer cut short"),
        pytest.param(b"\x04\x05ab", id="string cut short"),
        pytest.param(b"\x00", id="literal name missing"),
        pytest.param(b"\x04", id="literal value missing"),
        pytest.param(b"\x40\x01a", id="new-name literal without value"),
        pytest.param(b"\x3f\xe2\x1f", id="size update above SETTINGS_HEADER_TABLE_SIZE"),
        pytest.param(b"\x82\x20", id="size update after a field"),
    ],
)
def test_malformed_blocks_are_compression_errors(data: bytes) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(data)
    reference = oracle.Decoder()
    with pytest.raises(
        (oracle.HPACKDecodingError, oracle.InvalidTableIndex, oracle.OversizedHeaderListError)
    ):
        reference.decode(data)


def test_size_updates_at_the_start_evict() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01a\x01b\x40\x01c\x01d")  # two entries of 34 bytes
    assert table(decoder) == [(b"c", b"d"), (b"a", b"b")]
    decoder.decode(b"\x20\x3f\x03\x82")  # size 0, then 34: emptied, and a field after
    assert table(decoder) == []
    decoder.decode(b"\x40\x01a\x01b\x40\x01c\x01d")  # the second evicts the first
    assert table(decoder) == [(b"c", b"d")]
    assert decoder.table_size == 34


def test_an_entry_larger_than_the_table_empties_it() -> None:
    decoder = Decoder(max_table_size=64)
    decoder.decode(b"\x40\x01a\x01b")
    assert decoder.decode(b"\x40\x01x" + bytes((40,)) + b"y" * 40) == [(b"x", b"y" * 40)]
    assert table(decoder) == []
    assert decoder.table_size == 0


# -- the decoded-size bound (SETTINGS_MAX_HEADER_LIST_SIZE) --------------------------------


def test_a_list_past_the_bound_is_dropped_but_keeps_the_table_in_step() -> None:
    encoder = oracle.Encoder()
    big = (b"x-big", b"v" * 3000)
    ours = Decoder(max_list_size=8000)
    # An "HPACK bomb": one large entry, then a block naming it many times (1 byte each).
    assert ours.decode(encoder.encode([big])) == [big]
    bomb = encoder.encode([big] * 1000)
    assert len(bomb) == 1000
    assert ours.decode(bomb) is None
    # Literals with indexing after the bound still enter the table.
    after = encoder.encode([big] * 3 + [(b"x-new", b"1")])
    assert ours.decode(after) is None
    assert ours.decode(encoder.encode([(b"x-new", b"1"), (b":method", b"GET")])) == [
        (b"x-new", b"1"),
        (b":method", b"GET"),
    ]


def test_the_bound_counts_32_bytes_per_field() -> None:
    fields = [(b"a", b"b")] * 10  # 34 bytes each: 340
    data = oracle.Encoder().encode(fields)
    assert Decoder(max_list_size=340).decode(data) == fields
    assert Decoder(max_list_size=339).decode(data) is None


# -- encoding responses --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=100, max_value=999),
    st.lists(
        st.tuples(st.one_of(static_name, st.binary(min_size=1, max_size=300)), any_bytes),
        max_size=10,
    ),
)
def test_responses_encode_for_any_decoder(status: int, fields: list) -> None:
    data = encode_status(status) + b"".join(encode_field(n, v) for n, v in fields)
    reference = oracle.Decoder()
    reference.max_header_list_size = 1 << 30
    decoded = [(bytes(n), bytes(v)) for n, v in reference.decode(data, raw=True)]
    assert decoded == [(b":status", b"%d" % status), *fields]
    assert oracle_table(reference) == []  # nothing enters the client's table
    assert Decoder(max_list_size=1 << 30).decode(data) == decoded
