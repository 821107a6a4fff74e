"""Image width and height read from the file's header, without decoding it.

Every format a folder source accepts has a parser here, so the pixel limit is checked before a
decoder allocates anything. Each parser reads a few bytes through ``read(offset, size)``, so a JPEG
whose size marker sits after megabytes of metadata is walked marker by marker, never loaded whole.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

Reader = Callable[[int, int], bytes]

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def header_size(read: Reader) -> tuple[int, int] | None:
    """``(width, height)`` from the header, or None when the format is not recognised or its header is damaged.

    Example::

        with open("scan.tif", "rb") as handle:
            size = header_size(lambda offset, n: (handle.seek(offset), handle.read(n))[1])
    """
    head = read(0, 32)
    for magic, parser in _PARSERS:
        if head.startswith(magic):
            try:
                return parser(read)
            except (struct.error, ValueError, IndexError, KeyError):
                return None
    return None


def jpeg_layout(read: Reader) -> tuple[tuple[int, int] | None, int | None]:
    """``((width, height) or None, offset of the first start-of-scan marker or None)`` of a JPEG."""
    size, offset = None, 2
    while True:
        pair = read(offset, 2)
        if len(pair) < 2:
            return size, None
        if pair[0] != 0xFF:  # libjpeg skips stray bytes between markers: so do we
            offset = _next_ff(read, offset)
            if offset is None:
                return size, None
            continue
        marker = pair[1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker in _JPEG_STANDALONE:
            offset += 2
        elif marker == 0xDA:
            return size, offset
        elif marker == 0xD9:
            return size, None
        else:
            segment = read(offset + 2, 7)
            if len(segment) < 2:
                return size, None
            if marker in _JPEG_SOF and len(segment) >= 7 and size is None:
                height, width = struct.unpack(">HH", segment[3:7])
                size = (width, height)
            offset += 2 + struct.unpack(">H", segment[:2])[0]


def _next_ff(read: Reader, offset: int) -> int | None:
    while True:
        chunk = read(offset, 1 << 16)
        if not chunk:
            return None
        found = chunk.find(b"\xff")
        if found >= 0:
            return offset + found
        offset += len(chunk)


def _jpeg(read: Reader) -> tuple[int, int] | None:
    return jpeg_layout(read)[0]


def _png(read: Reader) -> tuple[int, int]:
    return struct.unpack(">II", read(16, 8))


def _gif(read: Reader) -> tuple[int, int]:
    return struct.unpack("<HH", read(6, 4))


def _bmp(read: Reader) -> tuple[int, int]:
    dib = struct.unpack("<I", read(14, 4))[0]
    if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", read(18, 4))
    width, height = struct.unpack("<ii", read(18, 8))
    return abs(width), abs(height)


def _sun_raster(read: Reader) -> tuple[int, int]:
    return struct.unpack(">II", read(4, 8))


def _webp(read: Reader) -> tuple[int, int] | None:
    head = read(0, 30)
    if head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _pnm(read: Reader) -> tuple[int, int] | None:
    text = read(0, 1 << 16)
    if text[1:2] == b"7":  # PAM: "WIDTH n" and "HEIGHT n" lines before ENDHDR
        fields = dict(line.split(None, 1) for line in text.split(b"ENDHDR")[0].splitlines()[1:] if b" " in line)
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    tokens: list[bytes] = []
    for line in text[2:].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return int(tokens[0]), int(tokens[1])
    return None


def _tiff(read: Reader) -> tuple[int, int] | None:
    order = "<" if read(0, 2) == b"II" else ">"
    big = struct.unpack(order + "H", read(2, 2))[0] == 43
    if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        ifd = struct.unpack(order + "Q", read(8, 8))[0]
        count = struct.unpack(order + "Q", read(ifd, 8))[0]
        entries, entry_size, start = read(ifd + 8, min(count, 4096) * 20), 20, 0
    else:
        ifd = struct.unpack(order + "I", read(4, 4))[0]
        count = struct.unpack(order + "H", read(ifd, 2))[0]
        entries, entry_size, start = read(ifd + 2, count * 12), 12, 0
    found: dict[int, int] = {}
    for start in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = struct.unpack(order + "HH", entries[start : start + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3), LONG (4) or LONG8 (16)
            value_at = start + (12 if big else 8)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                return None
            found[tag] = struct.unpack(order + fmt, entries[value_at : value_at + struct.calcsize(fmt)])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _jp2(read: Reader) -> tuple[int, int] | None:
    head = read(0, 1 << 16)
    at = head.find(b"ihdr")
    if at < 0:
        return None
    height, width = struct.unpack(">II", head[at + 4 : at + 12])
    return width, height


def _j2k(read: Reader) -> tuple[int, int]:
    # SIZ marker segment right after SOC: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz.
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", read(8, 16))
    return xsiz - xo, ysiz - yo


def _radiance(read: Reader) -> tuple[int, int] | None:
    head = read(0, 1 << 16)
    end = head.find(b"\n\n")
    if end < 0:
        return None
    line = head[end + 2 :].split(b"\n", 1)[0].split()
    if len(line) != 4:
        return None
    sizes = {line[0][1:]: int(line[1]), line[2][1:]: int(line[3])}
    return sizes[b"X"], sizes[b"Y"]


_PARSERS: tuple[tuple[bytes, Callable[[Reader], tuple[int, int] | None]], ...] = (
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8", _jpeg),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"BM", _bmp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"II+\x00", _tiff),
    (b"MM\x00+", _tiff),
    (b"RIFF", _webp),
    (b"\x59\xa6\x6a\x95", _sun_raster),
    (_JP2_SIGNATURE, _jp2),
    (b"\xff\x4f\xff\x51", _j2k),
    (b"#?RADIANCE", _radiance),
    (b"#?RGBE", _radiance),
    *((b"P" + bytes([digit]), _pnm) for digit in b"1234567"),
    (b"Pf", _pnm),
    (b"PF", _pnm),
)
