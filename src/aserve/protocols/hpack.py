"""HPACK (RFC 7541): the header block decoder of an HTTP/2 connection, and response encoding.

Decoding keeps the client's dynamic table and enforces, while it decodes, the bound on the
decoded size (SETTINGS_MAX_HEADER_LIST_SIZE: `--limit-request-head`) and on the table's size
(the SETTINGS_HEADER_TABLE_SIZE we announced). A header list past the bound is still decoded
to its end, without keeping its fields, so that the table stays in step with the client's.

Responses are encoded without the dynamic table (literals that never enter it, names indexed
from the static table): the encoding of a header list then depends on nothing but the list,
so it is cached per distinct list and shared by every connection, as the HTTP/1.1 header
block is (protocols/headers.py). It costs a few dozen bytes per response against a
connection-local table; a table-less encoder is what RFC 7541 allows any encoder to be.
Compiled with the hot path when the build can (setup.py).
"""

from __future__ import annotations

from typing import Final

# RFC 7541, Appendix A.
# Typed `tuple[bytes, ...]` (as the dynamic table's entries): compiled, a `tuple[bytes, bytes]`
# is unboxed into a C struct and boxed again as a new tuple wherever it goes into a list, where
# a tuple of any length stays the one object it is, shared by every header list that names it.
STATIC_TABLE: Final[tuple[tuple[bytes, ...], ...]] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
STATIC_SIZE: Final = 61

# Each table entry counts its name and value plus 32 (RFC 7541, 4.1); RFC 9113, 6.5.2 counts
# a header list the same way.
ENTRY_OVERHEAD: Final = 32
STATIC_SIZES: Final[list[int]] = [len(n) + len(v) + ENTRY_OVERHEAD for n, v in STATIC_TABLE]

# The bit length of each symbol's code (RFC 7541, Appendix B; symbol 256 is EOS). The code is
# canonical: codes are handed out in order of length, then of symbol, so the lengths are all
# the table needs to carry (`_build_decoder` makes the codes from them).
_CODE_LENGTHS: Final = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b"
    "080606060505050606060606060607080f060c0a0d0607070707070707070707070707070707070707070707"
    "0807080d130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c14161414"
    "1616161716171717171718171818161718171717171516171617171816151416161717151716161815161717"
    "151516151716171714161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a"
    "1c1b1b1b14181415161515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e"
)


class HpackError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR for the whole connection."""


def _build_decoder() -> tuple[list[int], list[bool]]:
    """The Huffman decoder as a state machine read 4 bits at a time (as nghttp2's).

    States are the tree's inner nodes (0 is the root). `table[state * 16 + nibble]` is the
    next state, plus 256 * (symbol + 1) when a symbol ends within the nibble (one at most:
    the shortest code has 5 bits), or -1 where the bits reach EOS, which a string may not
    hold. `accepts[state]`: a string may end in this state, its padding being at most 7 bits
    of the EOS code's leading ones (RFC 7541, 5.2).
    """
    lengths = _CODE_LENGTHS
    order = sorted(range(257), key=lambda symbol: (lengths[symbol], symbol))
    # The tree: children[node] = [zero, one]; a child >= 0 is an inner node, -1 - s a leaf.
    children: list[list[int]] = [[0, 0]]
    code = 0
    previous = lengths[order[0]]
    for position, symbol in enumerate(order):
        length = lengths[symbol]
        if position:
            code = (code + 1) << (length - previous)
        previous = length
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            child = children[node][bit]
            if child == 0:
                child = len(children)
                children.append([0, 0])
                children[node][bit] = child
            node = child
        children[node][code & 1] = -1 - symbol
    accepts = [False] * len(children)
    node = 0
    for _depth in range(8):  # the root and the all-ones path down to 7 bits
        accepts[node] = True
        node = children[node][1]
    table = [0] * (len(children) * 16)
    for state in range(len(children)):
        for nibble in range(16):
            node = state
            emitted = 0
            failed = False
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child >= 0:
                    node = child
                elif child == -257:
                    failed = True
                    break
                else:
                    emitted = -child  # the symbol + 1
                    node = 0
            table[state * 16 + nibble] = -1 if failed else node + 256 * emitted
    return table, accepts


_HUFFMAN, _ACCEPTS = _build_decoder()
HUFFMAN_TABLE: Final[list[int]] = _HUFFMAN
HUFFMAN_ACCEPTS: Final[list[bool]] = _ACCEPTS


def huffman_decode(data: bytes, start: int, end: int) -> bytes:
    table = HUFFMAN_TABLE
    out = bytearray()
    state = 0
    for i in range(start, end):
        byte = data[i]
        entry = table[state * 16 + (byte >> 4)]
        if entry < 0:
            raise HpackError("EOS in a Huffman-coded string")
        if entry >= 256:
            out.append((entry >> 8) - 1)
        entry = table[(entry & 255) * 16 + (byte & 15)]
        if entry < 0:
            raise HpackError("EOS in a Huffman-coded string")
        if entry >= 256:
            out.append((entry >> 8) - 1)
        state = entry & 255
    if not HUFFMAN_ACCEPTS[state]:
        raise HpackError("invalid padding of a Huffman-coded string")
    return bytes(out)


class Decoder:
    """The decoding side of one connection's HPACK context (its dynamic table).

    `decode` takes a whole header block (HEADERS and its CONTINUATIONs joined) and returns
    its fields, or None when their decoded size went past `max_list_size`: the block is then
    decoded to its end only to keep the table right, none of its fields being kept. A field
    taken from a table is the table's own tuple, so a block that names one large entry many
    times (an "HPACK bomb") costs a list slot per name until the bound stops it.
    """

    __slots__ = ("_limit", "_sizes", "_table", "max_list_size", "max_table_size", "table_size")

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 65536) -> None:
        # Oldest first: the newest entry, index 62, is the last. Each entry's size beside it.
        self._table: list[tuple[bytes, ...]] = []
        self._sizes: list[int] = []
        self.table_size = 0
        # What we announced in SETTINGS_HEADER_TABLE_SIZE, and what the client's encoder
        # chose to use of it with its last size update.
        self.max_table_size = max_table_size
        self._limit = max_table_size
        self.max_list_size = max_list_size

    def decode(self, data: bytes) -> list[tuple[bytes, ...]] | None:
        """The (name, value) tuples of a header block, or None past `max_list_size`."""
        fields: list[tuple[bytes, ...]] | None = []
        table = self._table
        sizes = self._sizes
        size = 0
        limit = self.max_list_size
        end = len(data)
        i = 0
        may_resize = True  # a table size update may only begin the block (RFC 7541, 4.2)
        while i < end:
            byte = data[i]
            field: tuple[bytes, ...]
            if byte & 0x80:  # indexed field
                index, i = _integer(data, i, end, 0x7F)
                if index <= STATIC_SIZE:
                    if index == 0:
                        raise HpackError("index 0")
                    field = STATIC_TABLE[index - 1]
                    entry = STATIC_SIZES[index - 1]
                else:
                    position = len(table) - (index - STATIC_SIZE)
                    if position < 0:
                        raise HpackError("index past the dynamic table")
                    field = table[position]
                    entry = sizes[position]
            elif byte & 0x40:  # literal, indexed from now on
                index, i = _integer(data, i, end, 0x3F)
                if index:
                    name = self._name(index)
                else:
                    name, i = _string(data, i, end)
                value, i = _string(data, i, end)
                field = (name, value)
                entry = len(name) + len(value) + ENTRY_OVERHEAD
                self._add(field, entry)
            elif byte & 0x20:  # dynamic table size update
                if not may_resize:
                    raise HpackError("table size update after a field")
                new_size, i = _integer(data, i, end, 0x1F)
                if new_size > self.max_table_size:
                    raise HpackError("table size update above SETTINGS_HEADER_TABLE_SIZE")
                self._limit = new_size
                self._evict(0)
                continue
            else:  # literal, not indexed (0000) or never indexed (0001)
                index, i = _integer(data, i, end, 0x0F)
                if index:
                    name = self._name(index)
                else:
                    name, i = _string(data, i, end)
                value, i = _string(data, i, end)
                field = (name, value)
                entry = len(name) + len(value) + ENTRY_OVERHEAD
            may_resize = False
            if fields is not None:
                size += entry
                if size > limit:
                    fields = None  # decoded on to keep the table in step; nothing kept
                else:
                    fields.append(field)
        return fields

    def _name(self, index: int) -> bytes:
        name: bytes = self._field(index)[0]
        return name

    def _field(self, index: int) -> tuple[bytes, ...]:
        if index <= STATIC_SIZE:
            if index == 0:
                raise HpackError("index 0")
            return STATIC_TABLE[index - 1]
        table = self._table
        position = len(table) - (index - STATIC_SIZE)
        if position < 0:
            raise HpackError("index past the dynamic table")
        return table[position]

    def _add(self, field: tuple[bytes, ...], size: int) -> None:
        if size > self._limit:
            self._table.clear()  # an entry larger than the table empties it (RFC 7541, 4.4)
            self._sizes.clear()
            self.table_size = 0
            return
        self._evict(size)
        self._table.append(field)
        self._sizes.append(size)
        self.table_size += size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until `room` more bytes fit."""
        sizes = self._sizes
        size = self.table_size
        limit = self._limit - room
        count = 0
        while size > limit:
            size -= sizes[count]
            count += 1
        if count:
            del self._table[:count]
            del sizes[:count]
            self.table_size = size


def _integer(data: bytes, i: int, end: int, mask: int) -> tuple[int, int]:
    """The integer whose prefix is the low bits `mask` of data[i] (RFC 7541, 5.1), and the
    position after it. Values past 2**28 are refused: no size or index needs them."""
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        if i >= end:
            raise HpackError("integer cut short")
        byte = data[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise HpackError("integer too large")


def _string(data: bytes, i: int, end: int) -> tuple[bytes, int]:
    """The string literal at data[i] (RFC 7541, 5.2) and the position after it."""
    if i >= end:
        raise HpackError("string cut short")
    huffman = data[i] & 0x80
    length, i = _integer(data, i, end, 0x7F)
    stop = i + length
    if stop > end:
        raise HpackError("string cut short")
    if huffman:
        return huffman_decode(data, i, stop), stop
    return data[i:stop], stop


# -- encoding responses ------------------------------------------------------------------------

# The first index of each name in the static table.
STATIC_NAMES: Final[dict[bytes, int]] = {}
for _index in range(STATIC_SIZE, 0, -1):
    STATIC_NAMES[STATIC_TABLE[_index - 1][0]] = _index

_STATUS_INDEXED: Final[dict[int, bytes]] = {
    200: b"\x88",
    204: b"\x89",
    206: b"\x8a",
    304: b"\x8b",
    400: b"\x8c",
    404: b"\x8d",
    500: b"\x8e",
}


def encode_integer(value: int, mask: int, first: int) -> bytes:
    """`value` with a prefix of the low bits `mask`, the high bits of its first byte `first`."""
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field as a literal that never enters the table, its name indexed when the static
    table has it; no Huffman coding."""
    index = STATIC_NAMES.get(name, 0)
    if index:
        head = encode_integer(index, 0x0F, 0)
    else:
        head = b"\x00" + encode_integer(len(name), 0x7F, 0) + name
    return head + encode_integer(len(value), 0x7F, 0) + value


def encode_status(status: int) -> bytes:
    """`:status`, indexed when the static table has it."""
    indexed = _STATUS_INDEXED.get(status)
    if indexed is not None:
        return indexed
    return b"\x08\x03%d" % status
