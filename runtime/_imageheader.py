"""Image width and height read from the file's header, without decoding it.

Every format a folder source accepts has a parser here, so the pixel limit is checked before a
decoder allocates anything; a file whose format is none of these, or whose header cannot be read,
is not handed to a decoder at all. Each parser reads a few bytes through ``read(offset, size)``, so
a JPEG whose size marker sits after megabytes of metadata is walked marker by marker, never loaded
whole. Where a decoder could read a size from another place than ours (a TIFF size tag of any
integer type, a JPEG 2000 file's header box and its codestream), the parser reads every such place
and keeps the largest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

Reader = Callable[[int, int], bytes]


class Header(NamedTuple):
    """What a file's first bytes say: its format (None: not an image format edgeseg reads), its
    ``(width, height)`` (None: the header is damaged or unreadable), and why not, in words."""

    format: str | None
    size: tuple[int, int] | None
    problem: str | None = None


class _Unreadable(ValueError):
    """A header that parses but that no decoder should be given (the message says why)."""

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def header_size(read: Reader) -> tuple[int, int] | None:
    """``(width, height)`` from the header, or None when the format is not recognised or its header is damaged.

    Example::

        with open("scan.tif", "rb") as handle:
            size = header_size(lambda offset, n: (handle.seek(offset), handle.read(n))[1])
    """
    return read_header(read).size


def read_header(read: Reader) -> Header:
    """The format and size a file's header declares (:class:`Header`), reading only what it needs.

    Example::

        data = open("scan.jp2", "rb").read()
        kind, size, problem = read_header(lambda offset, n: data[offset: offset + n])   # 'JPEG 2000', (640, 480), None
    """
    head = read(0, 32)
    for magic, kind, parser in _PARSERS:
        if head.startswith(magic):
            try:
                size = parser(read)
            except _Unreadable as error:
                return Header(kind, None, str(error))
            except (struct.error, ValueError, IndexError, KeyError):
                return Header(kind, None, "its header is damaged")
            if size is None:
                return Header(kind, None, "its header holds no size")
            if size[0] <= 0 or size[1] <= 0:
                return Header(kind, None, f"its header says {size[0]}x{size[1]} pixels")
            return Header(kind, size)
    return Header(None, None, "not a known image format")


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


# TIFF field types a decoder (libtiff) accepts for ImageWidth/ImageLength: every integer type, signed ones too.
_TIFF_INTEGERS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}


def _tiff(read: Reader) -> tuple[int, int] | None:
    order = "<" if read(0, 2) == b"II" else ">"
    big = struct.unpack(order + "H", read(2, 2))[0] == 43
    if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        ifd = struct.unpack(order + "Q", read(8, 8))[0]
        count = struct.unpack(order + "Q", read(ifd, 8))[0]
        entries, entry_size, inline = read(ifd + 8, min(count, 4096) * 20), 20, 8
    else:
        ifd = struct.unpack(order + "I", read(4, 4))[0]
        count = struct.unpack(order + "H", read(ifd, 2))[0]
        entries, entry_size, inline = read(ifd + 2, count * 12), 12, 4
    found: dict[int, list[int]] = {256: [], 257: []}
    for start in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = struct.unpack(order + "HH", entries[start : start + 4])
        if tag not in found:
            continue
        fmt = _TIFF_INTEGERS.get(kind)
        if fmt is None:
            raise _Unreadable(f"its size tag {tag} has type {kind}, not an integer type")
        value_at = start + (12 if big else 8)
        value = entries[value_at : value_at + inline]
        width = struct.calcsize(fmt)
        if width > inline:  # an 8-byte value in a classic TIFF: the entry holds its offset
            value = read(struct.unpack(order + "I", value)[0], width)
        number = struct.unpack(order + fmt, value[:width])[0]
        if number <= 0:
            raise _Unreadable(f"its size tag {tag} says {number}")
        found[tag].append(number)  # a tag given twice: the larger counts, whichever a decoder reads
    if found[256] and found[257]:
        return max(found[256]), max(found[257])
    return None


def _jp2(read: Reader) -> tuple[int, int] | None:
    # Walk the boxes (length, type): the header box jp2h holds ihdr (height, width, components); the
    # codestream box jp2c starts with SOC and SIZ, the size the decoder really allocates. Both count.
    sizes: list[tuple[int, int]] = []
    offset = 0
    for _ in range(1024):
        box = _jp2_box(read, offset)
        if box is None:
            break
        kind, body, length = box
        if kind == b"jp2h":
            inner = body
            for _ in range(64):
                if length is not None and inner >= offset + length:
                    break
                child = _jp2_box(read, inner)
                if child is None:
                    break
                if child[0] == b"ihdr":
                    height, width, components = struct.unpack(">IIH", read(child[1], 10))
                    _check_components(components)
                    sizes.append((width, height))
                    break
                if child[2] is None:
                    break
                inner += child[2]
        elif kind == b"jp2c":
            sizes.append(_siz(read, body))
            break
        if length is None:
            break
        offset += length
    if not sizes:
        return None
    return max(w for w, _ in sizes), max(h for _, h in sizes)


def _jp2_box(read: Reader, offset: int) -> tuple[bytes, int, int | None] | None:
    """``(type, offset of its contents, its whole length or None when it runs to the end)`` of the box at ``offset``."""
    head = read(offset, 16)
    if len(head) < 8:
        return None
    length, kind = struct.unpack(">I4s", head[:8])
    if length == 1:  # the real length follows as 8 bytes
        length = struct.unpack(">Q", head[8:16])[0]
        if length < 16:
            raise ValueError("a JPEG 2000 box shorter than its header")
        return kind, offset + 16, length
    if length == 0:  # the last box: runs to the end of the file
        return kind, offset + 8, None
    if length < 8:
        raise ValueError("a JPEG 2000 box shorter than its header")
    return kind, offset + 8, length


def _siz(read: Reader, offset: int) -> tuple[int, int]:
    # SOC (FF4F), then SIZ (FF51): Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz.
    data = read(offset, 42)
    if data[:4] != b"\xff\x4f\xff\x51":
        raise _Unreadable("its codestream does not start with a SIZ marker")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
    _check_components(struct.unpack(">H", data[40:42])[0])
    return xsiz - xo, ysiz - yo


def _check_components(components: int) -> None:
    # The decoder allocates every component before OpenCV keeps at most 4: 16384 of them is a bomb of its own.
    if not 1 <= components <= 4:
        raise _Unreadable(f"it has {components} components (OpenCV reads 1 to 4)")


def _j2k(read: Reader) -> tuple[int, int]:
    return _siz(read, 0)


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


_PARSERS: tuple[tuple[bytes, str, Callable[[Reader], tuple[int, int] | None]], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG", _png),
    (b"\xff\xd8", "JPEG", _jpeg),
    (b"GIF87a", "GIF", _gif),
    (b"GIF89a", "GIF", _gif),
    (b"BM", "BMP", _bmp),
    (b"II*\x00", "TIFF", _tiff),
    (b"MM\x00*", "TIFF", _tiff),
    (b"II+\x00", "TIFF", _tiff),
    (b"MM\x00+", "TIFF", _tiff),
    (b"RIFF", "WebP", _webp),
    (b"\x59\xa6\x6a\x95", "Sun raster", _sun_raster),
    (_JP2_SIGNATURE, "JPEG 2000", _jp2),
    (b"\xff\x4f\xff\x51", "JPEG 2000", _j2k),
    (b"#?RADIANCE", "Radiance HDR", _radiance),
    (b"#?RGBE", "Radiance HDR", _radiance),
    *((b"P" + bytes([digit]), "PNM", _pnm) for digit in b"1234567"),
    (b"Pf", "PFM", _pnm),
    (b"PF", "PFM", _pnm),
)
