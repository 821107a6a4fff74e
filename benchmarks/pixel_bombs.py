"""Pixel bombs: small files that claim huge images. Peak RSS and time of ``read_image`` on each, in a child.

The bombs of issue 22 (item 8), made here from scratch:

- ``slong.tif``, ``sshort.tif``: 0.7 MB TIFFs, one deflate strip of a real 16000 x 16000 RGB image,
  their size tags typed SLONG / SSHORT (a header check that knew SHORT and LONG only let them through);
- ``decoy_ihdr.jp2``: a 284-byte JPEG 2000 file claiming 12000 x 12000 in its header box and codestream,
  with an ``xml`` box before them holding ``ihdr`` and a small size (a byte search for ``ihdr`` read that).

Each is read by ``edgeseg.runtime.read_image`` in a fresh child process (``ru_maxrss`` is its peak) under a
virtual-memory cap (``--cap-gb``, 8), so a bomb that still goes off cannot take the machine down. The child
imports ``edgeseg`` from the current directory first: run it from the checkout to measure::

    python benchmarks/pixel_bombs.py --json benchmarks/results/pixel_bombs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

_CHILD = """
import os, resource, sys, time
sys.path.insert(0, os.getcwd())
from edgeseg.runtime import BadInputError, read_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    outcome = f"decoded {read_image(sys.argv[1]).shape}"
except BadInputError as error:
    outcome = f"refused: {error}"
except MemoryError:
    outcome = "MemoryError"
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{seconds:.3f} {peak / 1024:.0f} {(peak - base) / 1024:.0f} {outcome}")
"""


def tiff_bomb(width: int, height: int, kind: int, fmt: str) -> bytes:
    """An RGB TIFF with one deflate strip of zeros, its ImageWidth/ImageLength typed ``kind`` (9 SLONG, 8 SSHORT)."""
    compressor = zlib.compressobj(9)
    row = bytes(width * 3)
    strip = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def entry(tag: int, typ: int, count: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\0")

    ifd_at, count = 8, 11
    bits_at = ifd_at + 2 + 12 * count + 4
    strip_at = bits_at + 6
    formats_at = strip_at + len(strip)
    entries = [entry(256, kind, 1, struct.pack("<" + fmt, width)), entry(257, kind, 1, struct.pack("<" + fmt, height)),
               entry(258, 3, 3, struct.pack("<I", bits_at)), entry(259, 3, 1, struct.pack("<H", 8)),
               entry(262, 3, 1, struct.pack("<H", 2)), entry(273, 4, 1, struct.pack("<I", strip_at)),
               entry(277, 3, 1, struct.pack("<H", 3)), entry(278, 4, 1, struct.pack("<I", height)),
               entry(279, 4, 1, struct.pack("<I", len(strip))), entry(284, 3, 1, struct.pack("<H", 1)),
               entry(339, 3, 3, struct.pack("<I", formats_at))]
    ifd = struct.pack("<H", count) + b"".join(entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack("<HHH", 8, 8, 8) + strip + struct.pack("<HHH", 1, 1, 1)


def jp2_bomb(size: int) -> bytes:
    """A real 48x48 JPEG 2000 file whose ihdr and codestream (one tile) claim ``size`` x ``size``, with a decoy."""
    import cv2
    import numpy as np

    ok, encoded = cv2.imencode(".jp2", np.zeros((48, 48, 3), np.uint8))
    if not ok:
        raise SystemExit("this OpenCV has no JPEG 2000 encoder")
    data = bytearray(encoded.tobytes())
    siz = data.index(b"\xff\x4f\xff\x51")
    data[siz + 8: siz + 16] = struct.pack(">II", size, size)  # Xsiz, Ysiz
    data[siz + 24: siz + 32] = struct.pack(">II", size, size)  # XTsiz, YTsiz: one tile
    ihdr = data.index(b"ihdr")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", size, size)
    header_box = data.index(b"jp2h") - 4
    decoy = b"ihdr" + struct.pack(">II", 48, 48) + bytes(8)
    return bytes(data[:header_box]) + struct.pack(">I", 8 + len(decoy)) + b"xml " + decoy + bytes(data[header_box:])


def measure(path: Path, cap_gb: float) -> dict:
    def limit() -> None:
        cap = int(cap_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=600,
                          preexec_fn=limit, cwd=os.getcwd())
    seconds, peak, over_import, outcome = done.stdout.strip().split(" ", 3)
    return {"file": path.name, "bytes": path.stat().st_size, "seconds": float(seconds), "peak_rss_mb": int(peak),
            "rss_over_import_mb": int(over_import), "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap-gb", type=float, default=8.0, help="virtual memory cap of each child (default 8 GB)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bombs-") as folder:
        bombs = {"slong.tif": tiff_bomb(16000, 16000, 9, "i"), "sshort.tif": tiff_bomb(16000, 16000, 8, "h"),
                 "decoy_ihdr.jp2": jp2_bomb(12000)}
        results = []
        for name, data in bombs.items():
            path = Path(folder) / name
            path.write_bytes(data)
            results.append(measure(path, args.cap_gb))
            r = results[-1]
            print(f"{name} ({r['bytes']} bytes): {r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']} MB "
                  f"(+{r['rss_over_import_mb']} MB), {r['outcome'][:100]}")
    if args.json:
        report = {"results": results, "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), load "
                                                 f"{os.getloadavg()[0]:.1f}", "checkout": os.getcwd()}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
