"""The common WebSocket frames, read and built here instead of by websockets' parser.

Most traffic is whole messages of one frame each: a text or binary frame with FIN set, no RSV
bit (not compressed), masked as every client frame must be, within `--ws-max-size`.
`FrameReader` parses and unmasks those and turns each into its ASGI message; every other
frame (control frames, fragments, compressed or oversized ones, anything wrong) goes to
websockets' `ServerProtocol`, which keeps the whole protocol: the close handshake, pings,
fragmentation, permessage-deflate, every error and its close code. `text_frame` and
`binary_frame` build outgoing frames. Compiled with the hot path (setup.py): a small message
costs about 3k instructions here, against some 50k through websockets, and a large one about
a fifth less (fewer copies; docs/performance.md).

The hand-off keeps websockets' parser where it would have been had it read every byte: it
only ever sees whole frames, from a frame boundary on, in stream order. For a whole
unfragmented data frame its parser keeps no state beyond the frame (and the deflate extension
leaves a frame without RSV1 untouched), so a frame taken here is, for websockets, the same as
one never sent. The reader therefore takes a frame only when websockets is between frames,
with nothing buffered and no fragmented message begun. Once it gives websockets a byte, the
rest of that read goes there too, and the reader follows the frame headers in it (`_follow`)
to know where websockets stands: inside a frame (`owed` bytes to come, or the first bytes of a
header in `head`), or between frames, and whether a fragmented message is open. Text that is
not valid UTF-8 goes to websockets as well, so the connection fails exactly as it always did.
"""

from __future__ import annotations

from typing import Any, Final

from websockets.frames import apply_mask  # websockets' C speedup, or its pure-Python fallback

from aserve.metrics import Metrics

_TEXT_FIN: Final = 0x81  # FIN, no RSV bit, opcode 1
_BINARY_FIN: Final = 0x82  # FIN, no RSV bit, opcode 2
_MASKED: Final = 0x80
_EMPTY: Final = b""


class FrameReader:
    """Incoming frames of one WebSocket: the common ones become ASGI messages here.

    `feed(data)` returns the messages of the whole frames it took, in order, and leaves in
    `rest` what websockets must read (the bytes from the first frame it did not take on), to
    be passed to it after the messages are delivered. A whole frame that it would take, but
    that has not all arrived, waits here; one that websockets must read goes to it at once,
    as websockets would have read it byte by byte.
    """

    def __init__(self, max_size: int, metrics: Metrics | None) -> None:
        self.max_size = max_size  # a larger frame goes to websockets, which fails with 1009
        self.metrics = metrics
        self.rest: bytes | None = None  # for websockets, after the messages `feed` returned
        # The start of a frame this reader will take, not all here yet; `needed` is its whole
        # size once its header is here (0 before). A bytearray: read in many small pieces, a
        # frame takes no more memory than in websockets' own buffer.
        self.pending: bytearray | None = None
        self.needed = 0
        # Where websockets' parser stands: `owed` more bytes end the frame it is reading, or
        # `head` holds the part of a frame header it has; `fragmented` while a message sent
        # in fragments is open.
        self.owed = 0
        self.head = _EMPTY
        self.fragmented = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The messages of the whole frames taken from `data`; `rest` is set for the others."""
        if self.owed or self.head:
            self._follow(data, 0)  # websockets is inside a frame: it reads this whole chunk
            self.rest = data
            return []
        pending = self.pending
        if pending is not None:
            pending += data
            if len(pending) < self.needed:  # still not the whole frame
                return []
            data = bytes(pending)
            self.pending = None
            self.needed = 0
        messages: list[dict[str, Any]] = []
        end = len(data)
        position = 0
        wait = False  # the frame at `position` is one to take here, its header not all here
        while position < end:
            if self.fragmented:
                break
            if end - position < 2:
                wait = True
                break
            first = data[position]
            second = data[position + 1]
            if (first != _TEXT_FIN and first != _BINARY_FIN) or not second & _MASKED:
                break
            length = second & 0x7F
            start = position + 6
            if length == 126:
                if end - position < 4:
                    wait = True
                    break
                length = (data[position + 2] << 8) | data[position + 3]
                start = position + 8
            elif length == 127:
                if end - position < 10:
                    wait = True
                    break
                length = int.from_bytes(data[position + 2 : position + 10], "big")
                start = position + 14
            if length > self.max_size:
                break
            stop = start + length
            if stop > end:
                wait = True
                self.needed = stop - position
                break
            payload = apply_mask(data[start:stop], data[start - 4 : start])
            if first == _TEXT_FIN:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    break  # websockets reads it, and the connection fails as it always did
                messages.append({"type": "websocket.receive", "text": text})
            else:
                messages.append({"type": "websocket.receive", "bytes": payload})
            metrics = self.metrics
            if metrics is not None:
                metrics.websocket_frame_received(length, True)
            position = stop
        if position < end:
            rest = data[position:] if position else data
            if wait:
                self.pending = bytearray(rest)
            else:
                self._follow(rest, 0)
                self.rest = rest
        return messages

    def _follow(self, data: bytes, position: int) -> None:
        """Follow websockets' parser through `data`: where its frames begin and end."""
        end = len(data)
        head = self.head
        if head:
            # The frame whose header began in an earlier read: read that header with this one.
            self.head = _EMPTY
            joined = head + data[position : position + 14]
            size = _frame_size(joined, 0, self)
            if size < 0:
                self.head = joined
                return
            position += size - len(head)
        elif self.owed:
            position += self.owed
            self.owed = 0
        while position < end:
            size = _frame_size(data, position, self)
            if size < 0:
                self.head = data[position:]
                return
            position += size
        self.owed = position - end


def _frame_size(data: bytes, position: int, reader: FrameReader) -> int:
    """The whole size of the frame at `position` (header and payload), or -1 if its header is
    not all in `data`; notes on `reader` whether it opens or closes a fragmented message."""
    available = len(data) - position
    if available < 2:
        return -1
    first = data[position]
    second = data[position + 1]
    length = second & 0x7F
    header = 2
    if length == 126:
        header = 4
        if available < 4:
            return -1
        length = (data[position + 2] << 8) | data[position + 3]
    elif length == 127:
        header = 10
        if available < 10:
            return -1
        length = int.from_bytes(data[position + 2 : position + 10], "big")
    if second & _MASKED:
        header += 4
        if available < header:
            return -1
    opcode = first & 0x0F
    if opcode == 1 or opcode == 2:
        reader.fragmented = not first & 0x80
    elif opcode == 0 and first & 0x80:
        reader.fragmented = False
    return header + length


# The first two bytes of every short unmasked frame, made once: `bytes((a, b))` costs more
# than the rest of building a frame.
_TEXT_HEADERS: Final = tuple(bytes((_TEXT_FIN, size)) for size in range(126))
_BINARY_HEADERS: Final = tuple(bytes((_BINARY_FIN, size)) for size in range(126))


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame carrying `payload` (UTF-8)."""
    length = len(payload)
    if length < 126:
        return _TEXT_HEADERS[length] + payload
    return _long_header(_TEXT_FIN, length) + payload


def binary_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented binary frame carrying `payload`."""
    length = len(payload)
    if length < 126:
        return _BINARY_HEADERS[length] + payload
    return _long_header(_BINARY_FIN, length) + payload


def _long_header(first: int, length: int) -> bytes:
    if length < 65536:
        return bytes((first, 126, length >> 8, length & 0xFF))
    return bytes((first, 127)) + length.to_bytes(8, "big")
