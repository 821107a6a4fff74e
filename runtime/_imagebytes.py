"""Images as bytes in memory, for callers whose images never touch a file (``edgeseg serve``).

:func:`decode_image` is :func:`read_image`'s checked decoder for bytes: the size is read from the
header (:mod:`edgeseg.runtime._imageheader`) and refused above ``max_pixels`` before anything is decoded
(a "pixel bomb" of a few hundred bytes announcing 100k x 100k pixels costs a header read), a truncated
JPEG is refused, and a format whose header gives no size is refused rather than decoded blind.
:func:`encode_mask_png` gives the bytes :func:`write_mask_png` writes: a palette PNG of class ids;
:func:`decode_mask_png` reads them back; the two file functions are these two on a file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from edgeseg.runtime._frames import DEFAULT_MAX_PIXELS, decode_checked
from edgeseg.runtime._imageheader import read_header
from edgeseg.runtime.errors import BadInputError


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP, TIFF, WebP, ...) held in memory, as OpenCV would, or raise
    BadInputError in one line saying why (empty, not an image, too many pixels, truncated, corrupt): the runtime's
    one checked decoder, :func:`read_image`'s for files.

    Example::

        image = decode_image(request_body, max_pixels=25_000_000)   # BGR/BGRA/gray, 8 or 16 bit
    """
    data = bytes(data)
    if not data:
        raise BadInputError("empty image (0 bytes)")
    header = read_header(lambda offset, count: data[offset: offset + max(count, 0)])
    if header.format is None:  # a client sent something else: say what to send
        raise BadInputError(f"not an image (starts with {data[:8]!r}): send JPEG or PNG bytes (or BMP, TIFF, WebP)")
    return decode_checked(data, max_pixels=max_pixels, header=header)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_mask_png(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """A class-id mask as PNG bytes: palette-indexed for uint8 ids (any viewer shows the colours, the pixel
    values are the ids), 16-bit gray past 256 classes; the bytes :func:`write_mask_png` writes.

    Example::

        png = encode_mask_png(result.mask, model.contract.output.palette)
    """
    if mask.dtype != np.uint8:
        ok, encoded = cv2.imencode(".png", mask.astype(np.uint16))
        if not ok:
            raise ValueError(f"OpenCV cannot encode a {mask.shape} mask as PNG")
        return encoded.tobytes()
    height, width = mask.shape
    colours = [tuple(int(v) for v in c) for c in palette][:256] or [(0, 0, 0)]
    count = max(len(colours), int(mask.max()) + 1)
    plte = b"".join(bytes(colours[i % len(colours)]) for i in range(count))
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 0  # filter type "none" for every scanline
    rows[:, 1:] = mask
    return (_PNG_SIGNATURE
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 3))
            + _chunk(b"IEND", b""))


def decode_mask_png(data: bytes) -> np.ndarray:
    """Class ids from mask PNG bytes (:func:`encode_mask_png`'s, or any PNG): the palette indices of a paletted
    PNG, else the gray values. Raises BadInputError for bytes that are not a PNG.

    Example::

        ids = decode_mask_png(response_body)   # (H, W) uint8 class ids
    """
    if data[:8] == _PNG_SIGNATURE and len(data) > 28 and data[25] == 3 and data[24] == 8 and data[28] == 0:
        width, height = struct.unpack(">II", data[16:24])
        idat, pos = [], 8
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos: pos + 8])
            if kind == b"IDAT":
                idat.append(data[pos + 8: pos + 8 + length])
            pos += 12 + length
        rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width + 1)
        if np.any(rows[:, 0]):
            raise BadInputError("a paletted PNG with row filters other than 'none': not a mask edgeseg wrote")
        return rows[:, 1:].copy()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data[:8] == _PNG_SIGNATURE else None
    if image is None:
        raise BadInputError("not a mask PNG")
    return image if image.ndim == 2 else image[:, :, 0]
