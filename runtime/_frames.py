"""Frames and the finite sources that yield them: one image, a folder, a glob, a list file, a video.

A source is any iterable of :class:`Frame`. Each kind of source is a plain generator function;
the runtime's source module picks one from what the user typed. A file that cannot be read becomes a
frame with ``image=None`` and ``error`` set, so it costs that item and the run goes on.
Live sources (cameras, stream URLs) live in the runtime's stream module.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from edgeseg.runtime._imageheader import Header, Reader, jpeg_layout, read_header
from edgeseg.runtime.errors import BadInputError, EdgesegError

log = logging.getLogger("edgeseg.runtime")

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".pam", ".pfm", ".hdr",
     ".jp2", ".j2k", ".sr", ".ras"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif"})
# In a folder a GIF is an image (its first frame); given alone as SOURCE it is a video.
FOLDER_IMAGE_SUFFIXES = IMAGE_SUFFIXES | {".gif"}
# Larger images are refused per item rather than decoded into gigabytes.
DEFAULT_MAX_PIXELS = 100_000_000
# The decode-time limit in force, the most pixels OpenCV decodes in this process: OpenCV's own check backs the
# header check. edgeseg's package sets OPENCV_IO_MAX_IMAGE_PIXELS to DEFAULT_MAX_PIXELS before cv2 loads.
_DECODE_LIMIT = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "").strip()
DECODE_MAX_PIXELS = int(_DECODE_LIMIT) if _DECODE_LIMIT.isdigit() else 1 << 30
# The largest file an image of max_pixels needs: 16 bytes a pixel (float32 RGBA, uncompressed) plus metadata.
_MAX_BYTES_PER_PIXEL = 16
_MAX_METADATA_BYTES = 64 << 20


@dataclass(frozen=True)
class Frame:
    """One item from a source: an image (BGR/BGRA/gray as OpenCV decodes it) or the reason it has none."""

    index: int
    name: str
    image: np.ndarray | None
    timestamp: float = 0.0
    source: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself (frame_count may be 0 or wrong for damaged files)."""

    width: int
    height: int
    fps: float
    frame_count: int

    @classmethod
    def from_video_path(cls, path: str | os.PathLike) -> VideoInfo:
        capture = _open_video(path)
        try:
            return cls._from_capture(capture)
        finally:
            capture.release()

    @classmethod
    def _from_capture(cls, capture: cv2.VideoCapture) -> VideoInfo:
        fps = capture.get(cv2.CAP_PROP_FPS)
        return cls(
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=float(fps) if fps and fps > 0 and np.isfinite(fps) else 25.0,
            frame_count=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        )


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file as OpenCV would (alpha and 16-bit kept), or raise BadInputError saying why.

    Only a regular file is opened (a FIFO, a device, a socket or a folder is named and refused, also
    behind a symlink), and never more than its size is read. The size is read from the header first
    (every accepted format; a file whose format has no known header, or whose header cannot be read,
    is refused), so a huge image is refused before anything is decoded; OpenCV's own limit backs that
    check (``OPENCV_IO_MAX_IMAGE_PIXELS``, see :data:`DECODE_MAX_PIXELS`). The bytes go to OpenCV,
    never the path: OpenCV crashes on names that are not valid UTF-8.

    Example::

        image = read_image("scans/cell_01.tif", max_pixels=50_000_000)
    """
    path = Path(path)
    with _open_regular(path, what="an image file") as (handle, size):
        if path.suffix.lower() in VIDEO_SUFFIXES - FOLDER_IMAGE_SUFFIXES:
            raise BadInputError("a video file, not an image: segment it on its own (pass it as SOURCE)")
        if size == 0:
            raise BadInputError("empty file (0 bytes)")
        limit = max_pixels * _MAX_BYTES_PER_PIXEL + _MAX_METADATA_BYTES
        if size > limit:
            raise BadInputError(f"file too large for an image of at most {max_pixels} pixels ({size} bytes > {limit})")
        header = read_header(_file_reader(handle, size))
        _check_header(header, max_pixels)
        data = _read_all(handle, size)
    return decode_checked(data, header=header, max_pixels=max_pixels)


def decode_checked(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, header: Header | None = None) -> np.ndarray:
    """Decode image bytes with every check :func:`read_image` makes (the one checked decoder, for files and for
    bytes that never touch a file): the size from the header first (refused above ``max_pixels`` or OpenCV's
    own limit, or when the header gives none), a truncated JPEG refused, the decoded size checked again.
    ``header``: the header already read (``read_header``), else it is read from ``data``.

    Example::

        image = decode_checked(request_body, max_pixels=25_000_000)
    """
    if header is None:
        header = read_header(lambda offset, count: data[offset: offset + max(count, 0)])
    _check_header(header, max_pixels)
    if header.format == "JPEG":
        _check_jpeg_complete(data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV asserts on some damaged headers instead of returning None
        image = None
    if image is None:
        raise BadInputError("not a decodable image (corrupt, truncated or not an image)")
    _check_size((image.shape[1], image.shape[0]), max_pixels)
    return image


def _check_header(header: Header, max_pixels: int) -> None:
    if header.size is None:
        where = f"{header.format}: " if header.format else ""
        raise BadInputError(f"not a decodable image ({where}{header.problem}; nothing was decoded)")
    width, height = header.size
    _check_size(header.size, max_pixels)
    if width * height > DECODE_MAX_PIXELS:
        raise BadInputError(f"image too large for OpenCV in this process ({width}x{height} > "
                            f"OPENCV_IO_MAX_IMAGE_PIXELS={DECODE_MAX_PIXELS}; set it before edgeseg is imported)")


@contextlib.contextmanager
def _open_regular(path: Path, *, what: str) -> Iterator[tuple[int, int]]:
    """``(descriptor, size)`` of a regular file, or BadInputError naming what ``path`` is instead.

    The type is checked before opening (opening a FIFO waits for a writer; reading a device such as
    /dev/zero never ends) and again on the opened descriptor, which is opened non-blocking, so a file
    swapped for a FIFO in between cannot hang the run either.
    """
    try:
        kind = _not_regular(os.stat(path).st_mode, path)
        if kind is not None:
            raise BadInputError(f"{kind}, not {what}: only regular files are read")
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise BadInputError(f"unreadable file ({error.strerror or error})") from None
    try:
        info = os.fstat(handle)
        kind = _not_regular(info.st_mode, path)
        if kind is not None:
            raise BadInputError(f"{kind}, not {what}: only regular files are read")
        yield handle, info.st_size
    except OSError as error:
        raise BadInputError(f"unreadable file ({error.strerror or error})") from None
    finally:
        os.close(handle)


def _not_regular(mode: int, path: Path) -> str | None:
    """What a file that is not a regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        try:  # a folder the user cannot list loses everything in it: say so
            os.close(os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
        except OSError as error:
            return f"a folder that cannot be read ({error.strerror or error}; the files in it were not listed)"
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _file_reader(handle: int, size: int) -> Reader:
    def read(offset: int, count: int) -> bytes:
        count = min(count, size - offset)  # never past the size the file had when opened
        if count <= 0:
            return b""
        chunks, done = [], 0
        while done < count:
            chunk = os.pread(handle, count - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    return read


def _read_all(handle: int, size: int) -> bytearray:
    """Exactly ``size`` bytes from the start of the file (the size it had when opened), into one buffer."""
    data = bytearray(size)
    view, done = memoryview(data), 0
    while done < size:
        count = os.preadv(handle, [view[done:]], done)
        if count == 0:
            raise BadInputError(f"unreadable file (it shrank while being read: {done} of {size} bytes)")
        done += count
    return data


def _check_size(size: tuple[int, int] | None, max_pixels: int) -> None:
    if size is not None and size[0] * size[1] > max_pixels:
        raise BadInputError(f"image too large ({size[0]}x{size[1]} > {max_pixels} pixels)")


def _check_jpeg_complete(data: bytes) -> None:
    # libjpeg decodes a truncated JPEG with a grey bottom and only a warning: refuse it instead. The
    # end-of-image marker follows the last scan; bytes after it (thumbnails, padding) are allowed.
    # Inside scans 0xFF is always stuffed, so the first FFD9 after the first scan is the real end.
    _, scan = jpeg_layout(lambda offset, size: data[offset : offset + size])
    if scan is None or data.find(b"\xff\xd9", scan) < 0:
        raise BadInputError("truncated JPEG (no end-of-image marker after its image data)")


def display_path(path: str | os.PathLike | bytes) -> str:
    """A path as printable text: bytes that are not UTF-8 become ``\\xNN`` escapes (``b_\\xff.png``).

    Example::

        display_path(os.fsdecode(b"b_\\xff.png"))   # 'b_\\\\xff.png'
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def opencv_path(path: str | os.PathLike) -> Iterator[str]:
    """A path OpenCV can take for ``path``: the path itself when it is valid UTF-8, else a symlink to it.

    OpenCV 5 segfaults on file names that are not valid UTF-8 (VideoCapture, VideoWriter, imread,
    imwrite). Such a name is reached through a symlink with an ASCII name in a private temporary
    folder, removed when the block ends; the target need not exist yet (for writers).

    Example::

        with opencv_path(video) as name:
            capture = cv2.VideoCapture(name)
    """
    absolute = os.path.abspath(os.fspath(path))
    try:
        absolute.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield absolute
        return
    suffix = Path(absolute).suffix
    suffix = suffix if suffix.isascii() and suffix[1:].isalnum() else ""
    with tempfile.TemporaryDirectory(prefix="edgeseg-") as folder:
        link = os.path.join(folder, "media" + suffix)
        os.symlink(absolute, link)
        yield link


# An output is ``<folder>/<frame name>.png`` (masks, overlays), written through a temporary name: a name
# component longer than this is cut and given a hash of the whole (NAME_MAX is 255 bytes on ext4/xfs/tmpfs).
MAX_NAME_BYTES = 200
_HASH_CHARS = 16


def frame_names(paths: Sequence[Path], root: str | os.PathLike | None = None) -> list[str]:
    """The output name of each input: its stem (its path under ``root`` without the suffix).

    When two inputs would share a name (``a.jpg`` and ``a.png``), both keep their suffix
    (``a.jpg``, ``a.png``, so masks/a.jpg.png), and a name still taken gets ``~2``, ``~3``...
    Bytes that are not UTF-8 become ``\\xNN`` escapes, as in :func:`display_path`. Each part of a
    name longer than :data:`MAX_NAME_BYTES` (200) UTF-8 bytes is cut and ends in ``~`` and 16 hex
    digits of the SHA-256 of the whole part (:func:`bounded_name`), so every output name fits in a
    file name (255 bytes) and the same input always gets the same name.

    Example::

        frame_names([Path("a.jpg"), Path("a.png"), Path("b.png")])   # ['a.jpg', 'a.png', 'b']
    """
    relative = [_relative(path, root) for path in paths]
    stems = [display_path(rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()) for rel in relative]
    counts = collections.Counter(stems)
    names = [bounded_name(display_path(rel.as_posix()) if counts[stem] > 1 else stem)
             for rel, stem in zip(relative, stems)]
    taken: collections.Counter[str] = collections.Counter()
    unique = []
    for name in names:
        taken[name] += 1
        unique.append(name if taken[name] == 1 else f"{name}~{taken[name]}")
    return unique


def bounded_name(name: str) -> str:
    """``name`` with every ``/``-separated part cut to at most :data:`MAX_NAME_BYTES` UTF-8 bytes.

    A part that is too long keeps its beginning (whole characters) and ends in ``~`` and the first 16
    hex digits of the SHA-256 of the whole part: stable across runs and machines, distinct for
    distinct parts.

    Example::

        bounded_name("x" * 300)   # 'xxx...x~0d4e2ca9e9cbced7': 183 x, then the hash (200 bytes)
    """
    return "/".join(_bounded_part(part) for part in name.split("/"))


def _bounded_part(part: str) -> str:
    data = part.encode("utf-8", "surrogateescape")
    if len(data) <= MAX_NAME_BYTES:
        return part
    digest = hashlib.sha256(data).hexdigest()[:_HASH_CHARS]
    head = data[: MAX_NAME_BYTES - 1 - _HASH_CHARS].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def _relative(path: Path, root: str | os.PathLike | None) -> Path:
    if root is not None:
        try:
            return path.relative_to(root)
        except ValueError:
            pass
    return Path(path.name)


def image_frames(paths: Iterable[str | os.PathLike], *, root: str | os.PathLike | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, names: Iterable[str] | None = None) -> Iterator[Frame]:
    """Frames from image files in the given order; a bad file yields a frame with ``error`` set.

    ``names``: one per path (default: :func:`frame_names` of these paths; pass the names of the whole
    source when ``paths`` is a selection of it, so a name never depends on --stride/--start).
    ``Frame.source`` is the path as :func:`display_path` prints it.
    """
    paths = [Path(p) for p in paths]
    names = frame_names(paths, root) if names is None else names
    for index, (path, name) in enumerate(zip(paths, names)):
        source = display_path(path)
        try:
            yield Frame(index, name, read_image(path, max_pixels=max_pixels), source=source)
        except BadInputError as error:
            yield Frame(index, name, None, source=source, error=str(error))


def folder_paths(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """What a folder source holds, sorted by path: every image file, and every item that looks like
    one but is not (a folder named ``x.jpg``, a video file, a FIFO or a device named ``x.png``), so that
    it gets a record saying why. With ``recursive``, a subfolder that cannot be listed is such an item
    too (its record says its files were not read); symlinked subfolders are not followed (no loops).

    Other files (no image suffix) are named in the log. A folder that cannot be listed, or with nothing
    to process, raises EdgesegError: a run of zero frames is never a success.
    """
    folder = Path(folder)
    shown = display_path(folder)
    if not folder.is_dir():
        raise EdgesegError(f"Cannot read folder `{shown}`: not a directory.")
    chosen: list[Path] = []
    ignored: list[Path] = []
    links: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = [(Path(entry.path), _entry_is_dir(entry), entry.is_symlink()) for entry in listing]
        except OSError as error:
            if current == folder:
                raise EdgesegError(f"Cannot read folder `{shown}`: {error.strerror or error}. Check its permissions "
                                   "(it needs read and execute), or pass the images in it another way.") from None
            chosen.append(current)  # a subfolder we cannot list: one record names it, nothing vanishes silently
            continue
        for path, is_dir, is_link in entries:
            if is_dir and recursive:
                if is_link:
                    links.append(path)
                else:
                    pending.append(path)
            elif _is_folder_item(path):
                chosen.append(path)
            elif not is_dir:
                ignored.append(path)
    chosen.sort()
    if ignored:
        ignored.sort()
        names = ", ".join(display_path(p.name) for p in ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        log.info("%s: ignoring %d file(s) without an image or video suffix (%s)", shown, len(ignored), names)
    if links:
        links.sort()
        names = ", ".join(display_path(p.name) for p in links[:5]) + (", ..." if len(links) > 5 else "")
        log.info("%s: not following %d symlinked folder(s) (%s)", shown, len(links), names)
    if not chosen:
        raise EdgesegError(
            f"Source `{shown}` is a folder with no image files in it ({len(ignored)} other file(s)). "
            f"Pass a folder of images ({', '.join(sorted(FOLDER_IMAGE_SUFFIXES))}), an image, a video or a glob."
        )
    return chosen


def _entry_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symlink: a link to a folder is a folder
    except OSError:
        return False


def _is_folder_item(path: Path) -> bool:
    return path.suffix.lower() in FOLDER_IMAGE_SUFFIXES or path.suffix.lower() in VIDEO_SUFFIXES


def video_frames(path: str | os.PathLike, *, stride: int = 1, start: int = 0,
                 max_frames: int | None = None, seek: bool = False, max_failures: int = 25) -> Iterator[Frame]:
    """Decode a video file frame by frame; a damaged file yields every decodable frame, then says where it ended.

    A frame that fails to decode in the middle costs only itself: it comes as a frame with an error,
    and reading goes on. ``max_failures`` failed reads in a row end the video (its damaged or cut tail).
    ``seek``: jump to ``start`` (OpenCV seeks to the keyframe before it and decodes forward: the same
    pixels) instead of decoding every earlier frame; for frame ranges of long videos (``--ray``).
    """
    capture = _open_video(path)
    info = VideoInfo._from_capture(capture)
    stem, source = bounded_name(display_path(Path(path).stem)), display_path(path)
    try:
        index, yielded = 0, 0
        if seek and start > 0:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            index = int(capture.get(cv2.CAP_PROP_POS_FRAMES))
            if index != start:  # a container that cannot seek exactly: decode from the start instead
                capture.release()
                capture, index = _open_video(path), 0
        failed: list[int] = []  # failed reads since the last good one: yielded only once a later one works
        while max_frames is None or yielded < max_frames:
            wanted = index >= start and (index - start) % stride == 0
            # grab() skips the colour conversion of unwanted frames
            ok, image = capture.read() if wanted else (capture.grab(), None)
            if not ok:
                failed.append(index)
                if len(failed) >= max_failures or (info.frame_count and index + 1 >= info.frame_count):
                    break
                index += 1
                continue
            for lost in (i for i in failed if i >= start and (i - start) % stride == 0):
                if max_frames is not None and yielded >= max_frames:
                    break
                yield Frame(lost, f"{stem}_{lost:06d}", None, 0.0, source=source,
                            error=f"frame {lost} could not be decoded (damaged data in the video)")
                yielded += 1
            failed = []
            if not wanted:
                index += 1
                continue
            if max_frames is not None and yielded >= max_frames:
                break
            timestamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            yield Frame(index, f"{stem}_{index:06d}", image, timestamp, source=source)
            index += 1
            yielded += 1
        ended = failed[0] if failed else index  # the first frame that could not be read
        if max_frames is None and info.frame_count and ended < info.frame_count:
            log.warning("%s: video ended after %d of the %d frames its header announces (truncated or damaged)",
                        source, ended, info.frame_count)
    finally:
        capture.release()


def _open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    shown = display_path(path)
    try:
        kind = _not_regular(os.stat(path).st_mode, Path(path))
    except OSError as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else (error.strerror or str(error)).lower()
        raise EdgesegError(f"Cannot open video `{shown}`: {reason}.") from None
    if kind is not None:  # FFmpeg would wait forever on a FIFO and read a device without end
        raise EdgesegError(f"Cannot open video `{shown}`: it is {kind}, not a regular file.")
    # FFmpeg holds the file open once it is opened, so the symlink of opencv_path may go at once.
    with opencv_path(path) as name:
        capture = cv2.VideoCapture(name)
    if not capture.isOpened():
        capture.release()
        raise EdgesegError(f"Cannot open video `{shown}`: OpenCV found no decodable video stream in it.")
    return capture
