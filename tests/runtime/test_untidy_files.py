"""Files a demanding user points edgeseg at (issue 22, items 5-9 and 11): each is processed or named with a
reason, and none stops the run, hangs it or makes it allocate gigabytes."""

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeseg.runtime import BadInputError, EdgesegError, open_source, read_mask_png, segment
from edgeseg.runtime._frames import MAX_NAME_BYTES, bounded_name, folder_paths, frame_names, read_image
from edgeseg.runtime._preprocess import to_bgr8
from edgeseg.runtime.files import atomic_path, write_bytes_atomic


def _jsonl(folder):
    return [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]


def _png(path, image):
    with open(path, "wb") as handle:
        handle.write(cv2.imencode(".png", image)[1].tobytes())


# -- 5. long file names ---------------------------------------------------------------------------

def test_a_240_character_name_is_processed_and_its_outputs_get_a_bounded_stable_name(seg_model, tmp_path, kit):
    folder = tmp_path / "in"
    folder.mkdir()
    long_stem = "a" * 240
    _png(folder / f"{long_stem}.png", kit.colour_frame(8, 8, [kit.BLUE]))
    _png(folder / f"{'b' * 250}.jpg", kit.colour_frame(8, 8, [kit.RED]))  # shares its stem with the next one:
    _png(folder / f"{'b' * 250}.png", kit.colour_frame(8, 8, [kit.GREEN]))  # both keep a suffix (255 bytes long)
    _png(folder / "short.png", kit.colour_frame(8, 8, [kit.RED]))
    summary = segment(folder, model=seg_model, out=tmp_path / "o")
    assert (summary["frames"], summary["frames_failed"]) == (4, 0)
    records = _jsonl(tmp_path / "o")
    masks = tmp_path / "o" / "masks"
    for record in records:
        assert len(record["name"].encode()) <= MAX_NAME_BYTES
        assert (masks / f"{record['name']}.png").is_file()
    long_name = next(r["name"] for r in records if r["file"].endswith(f"{long_stem}.png"))
    assert long_name.startswith("a" * 100) and long_name == bounded_name(long_stem)  # the same name on every run
    assert read_mask_png(masks / f"{long_name}.png").min() == 2  # blue: class 2
    assert len({r["name"] for r in records}) == 4


def test_bounded_names_keep_short_ones_and_tell_long_ones_apart():
    assert bounded_name("sub/a") == "sub/a"
    first, second = bounded_name("x" * 300), bounded_name("x" * 299 + "y")
    assert first != second and len(first.encode()) == len(second.encode()) == MAX_NAME_BYTES
    escaped = frame_names([Path(os.fsdecode(b"\xff" * 200 + b".png"))])[0]  # each byte escaped as \xff: 800 chars
    assert len(escaped.encode()) <= MAX_NAME_BYTES and escaped.startswith("\\xff")
    assert bounded_name("d" * 230 + "/" + "é" * 150).count("/") == 1  # each part of a recursive name on its own


def test_the_atomic_writer_takes_a_name_of_255_bytes(tmp_path):
    target = tmp_path / ("é" * 127 + "x")  # 255 bytes of UTF-8
    write_bytes_atomic(target, b"data")
    assert target.read_bytes() == b"data" and os.listdir(tmp_path) == [target.name]


# -- 6. the umask -------------------------------------------------------------------------------

def test_atomic_writes_never_change_the_umask_other_threads_create_files_under(tmp_path):
    # Reading the umask by setting it (os.umask(0), then back) left a window in which a file another thread
    # created came out 0o666: 1 run in 9 wrote a world-writable overlay.mp4. Four writer threads here, and a
    # fifth creating files in native code (cv2.imwrite releases the GIL) as a video writer does.
    old = os.umask(0o022)
    stop, wrong, made = threading.Event(), [], [0]
    image = np.zeros((2, 2), np.uint8)

    def writer(k):
        for i in range(100_000):
            if stop.is_set():
                return
            write_bytes_atomic(tmp_path / f"w{k}_{i % 20}", b"x")

    def creator():
        for i in range(2000):
            path = tmp_path / f"c{i}.png"
            cv2.imwrite(str(path), image)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode != 0o644:
                wrong.append(oct(mode))
            path.unlink()
            made[0] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    try:
        for thread in threads:
            thread.start()
        creator()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        os.umask(old)
    assert made[0] == 2000 and not wrong, f"{len(wrong)} file(s) created with the wrong mode: {wrong[:3]}"
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("w*")} == {0o644}


def test_atomic_writes_never_set_the_process_umask(tmp_path):
    # The window above is two syscalls wide: the thread test shows the symptom when it is lucky, this shows the
    # cause every time. A profile hook sees every call of a built-in function, os.umask included.
    calls = []

    def watch(frame, event, arg):
        if event == "c_call" and arg is os.umask:
            calls.append(frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        with atomic_path(tmp_path / "b.bin") as temporary:
            temporary.write_bytes(b"y")
    finally:
        sys.setprofile(None)
    assert calls == [] and (tmp_path / "b.bin").read_bytes() == b"y"


def test_atomic_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.bin") as temporary:
            temporary.write_bytes(b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o640


# -- 7. only regular files are read -------------------------------------------------------------

@pytest.fixture
def specials(tmp_path, kit):
    """A folder with two good images and everything that is not a regular file, most named like an image."""
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png", kit.colour_frame(8, 8, [kit.RED]))
    _png(folder / "z.png", kit.colour_frame(8, 8, [kit.BLUE]))
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", folder / "link_to_fifo.jpg")
    os.symlink("/dev/zero", folder / "zero.png")
    os.mkfifo(folder / "pipe_without_suffix")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.png"))
    yield folder
    server.close()


@pytest.mark.timeout(60)  # before: the FIFO hung the run for ever, /dev/zero grew memory at 60 MB/s
def test_fifos_devices_and_sockets_are_named_and_the_good_images_still_run(specials, seg_model, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="edgeseg.runtime"):
        summary = segment(specials, model=seg_model, out=tmp_path / "o")
    records = {r["file"].rsplit("/", 1)[-1]: r for r in _jsonl(tmp_path / "o")}
    assert (summary["frames"], summary["frames_failed"]) == (2, 4)
    assert records["a.png"]["ok"] and records["z.png"]["ok"]
    assert "a FIFO (named pipe)" in records["pipe.png"]["error"]
    assert "a FIFO (named pipe)" in records["link_to_fifo.jpg"]["error"]  # through the symlink
    assert "a character device" in records["zero.png"]["error"]
    assert "a socket" in records["sock.png"]["error"]
    assert any("pipe_without_suffix" in r.getMessage() for r in caplog.records)  # named in the log, not lost


@pytest.mark.timeout(60)
def test_a_fifo_given_as_the_source_is_named(tmp_path):
    os.mkfifo(tmp_path / "frame.png")
    os.mkfifo(tmp_path / "clip.mp4")
    frames = list(open_source(tmp_path / "frame.png"))
    assert len(frames) == 1 and "a FIFO (named pipe), not an image file" in frames[0].error
    with pytest.raises(EdgesegError, match=r"it is a FIFO \(named pipe\), not a regular file"):
        list(open_source(tmp_path / "clip.mp4"))


def test_an_unreadable_subfolder_gets_a_record_and_an_unreadable_source_folder_one_line(seg_model, tmp_path, kit,
                                                                                         capsys):
    from edgeseg.cli import main

    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    _png(folder / "a.png", np.zeros((4, 4, 3), np.uint8))
    _png(folder / "locked" / "b.png", np.zeros((4, 4, 3), np.uint8))
    os.chmod(folder / "locked", 0)
    try:
        with kit.without_root_file_access():
            paths = folder_paths(folder, recursive=True)
            assert paths == [folder / "a.png", folder / "locked"]
            with pytest.raises(BadInputError, match=r"a folder that cannot be read \(Permission denied; the files in it"):
                read_image(folder / "locked")
            code = main(["segment", str(folder / "locked"), "--model", str(seg_model), "--out",
                         str(tmp_path / "o"), "--no-progress"])
    finally:
        os.chmod(folder / "locked", 0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and "Cannot read folder" in lines[0] and "Permission denied" in lines[0], err


# -- 8. pixel bombs -----------------------------------------------------------------------------

_TIFF_TYPES = {"BYTE": (1, "B"), "SHORT": (3, "H"), "LONG": (4, "I"), "SBYTE": (6, "b"), "SSHORT": (8, "h"),
               "SLONG": (9, "i"), "FLOAT": (11, "f")}


def tiny_tiff(width, height, *, kind="LONG", order="<"):
    """A TIFF of one IFD whose size tags have the given type, and no pixel data worth the name."""
    code, fmt = _TIFF_TYPES[kind]

    def entry(tag, typ, value, fmt_):
        return struct.pack(order + "HHI", tag, typ, 1) + struct.pack(order + fmt_, value).ljust(4, b"\0")

    entries = [entry(256, code, width, fmt), entry(257, code, height, fmt), entry(258, 3, 8, "H"), entry(259, 3, 1, "H"),
               entry(262, 3, 1, "H"), entry(273, 4, 8, "I"), entry(277, 3, 1, "H"), entry(278, 4, 1, "I"),
               entry(279, 4, 64, "I")]
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    return magic + struct.pack(order + "I", 72) + b"\0" * 64 + ifd


def tiny_bigtiff(width, height, *, code=16, fmt="Q"):
    def entry(tag, typ, value, fmt_):
        return struct.pack("<HHQ", tag, typ, 1) + struct.pack("<" + fmt_, value).ljust(8, b"\0")

    entries = [entry(256, code, width, fmt), entry(257, code, height, fmt), entry(258, 3, 8, "H"),
               entry(262, 3, 1, "H"), entry(273, 16, 16, "Q"), entry(279, 16, 64, "Q")]
    ifd = struct.pack("<Q", len(entries)) + b"".join(entries) + struct.pack("<Q", 0)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 80) + b"\0" * 64 + ifd


@pytest.mark.parametrize("kind", ["SHORT", "LONG", "SSHORT", "SLONG"])
def test_tiff_size_tags_of_every_integer_type_are_read(kind, tmp_path):
    size = 30000 if kind in ("SHORT", "SSHORT") else 40000  # SSHORT and SHORT tops out at 32767 and 65535
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiny_tiff(size, size, kind=kind, order=">" if kind.startswith("S") else "<"))
    with pytest.raises(BadInputError, match=rf"too large \({size}x{size}"):
        read_image(path)


def test_tiff_sizes_of_8_byte_or_odd_types_are_read_or_refused(tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(tiny_bigtiff(50000, 50000, code=17, fmt="q"))  # SLONG8
    with pytest.raises(BadInputError, match=r"too large \(50000x50000"):
        read_image(path)
    path.write_bytes(tiny_tiff(100, 100, kind="FLOAT"))
    with pytest.raises(BadInputError, match=r"TIFF: its size tag 256 has type 11, not an integer type; nothing was decoded"):
        read_image(path)
    path.write_bytes(tiny_tiff(-5, 100, kind="SLONG"))
    with pytest.raises(BadInputError, match="TIFF: its size tag 256 says -5"):
        read_image(path)


def _jp2_claiming(width, height, *, hide_ihdr):
    """A real small JPEG 2000 file whose codestream (SIZ) claims ``width`` x ``height``; its ``ihdr`` box
    renamed when ``hide_ihdr`` (a byte search for it finds nothing; the decoder reads the codestream)."""
    ok, encoded = cv2.imencode(".jp2", np.zeros((48, 48, 3), np.uint8))  # OpenJPEG refuses images under ~32 px
    assert ok
    data = bytearray(encoded.tobytes())
    siz = data.index(b"\xff\x4f\xff\x51")
    data[siz + 8: siz + 16] = struct.pack(">II", width, height)
    if hide_ihdr:
        at = data.index(b"ihdr")
        data[at: at + 4] = b"ihdx"
    return bytes(data)


@pytest.mark.parametrize("hide_ihdr", [True, False])
def test_a_jp2_bomb_is_refused_from_its_codestream_header(hide_ihdr, tmp_path):
    path = tmp_path / "bomb.jp2"
    path.write_bytes(_jp2_claiming(40000, 40000, hide_ihdr=hide_ihdr))
    started = time.monotonic()
    with pytest.raises(BadInputError, match=r"too large \(40000x40000"):
        read_image(path)
    assert time.monotonic() - started < 30  # a hang guard: decoding it took 30 s and 2 GB before


@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", "PNG: its header is damaged"),
    (tiny_tiff(10, 10)[:8] + b"\0" * 64 + b"\0\0", "TIFF: its header holds no size"),
    (b"v/1\x01\x02\x00\x00\x00" + b"\0" * 64, "not a known image format"),  # OpenEXR's magic: not read here
])
def test_a_header_that_cannot_be_read_is_refused_before_any_decoder_sees_it(data, message, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(BadInputError, match=message):
        read_image(path)


def test_opencvs_own_pixel_limit_backs_the_header_check(tmp_path):
    # A PNG whose header claims 20000x20000 (400 M pixels) and holds one row: OpenCV, loaded by edgeseg,
    # refuses it itself before allocating, so a header our parser reads differently cannot become a bomb.
    png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()
    ihdr = struct.pack(">II", 20000, 20000) + png[24:29]
    bomb = png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]
    (tmp_path / "bomb.png").write_bytes(bomb)
    code = ("import os\n"
            "import edgeseg.runtime\n"  # first: OpenCV reads its limit when it loads
            "import cv2, numpy as np\n"
            "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])\n"
            "try:\n"
            "    image = cv2.imdecode(np.fromfile('bomb.png', np.uint8), cv2.IMREAD_UNCHANGED)\n"
            "    print('decoded', None if image is None else image.shape)\n"
            "except cv2.error as error:\n"
            "    print('refused', 'CV_IO_MAX_IMAGE_PIXELS' in str(error))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.stdout.split() == ["100000000", "refused", "True"], done.stderr[-2000:]


# -- 9. floating-point images -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".tif", ".hdr", ".pfm"])
def test_float_images_in_0_to_1_are_segmented_as_their_colours_not_black(suffix, seg_model, tmp_path):
    image = np.zeros((8, 8, 3), np.float32)
    image[..., 0] = 0.9  # blue dominates (BGR): class 2; read as black, every class ties and class 0 wins
    image[..., 1] = 0.2
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"f{suffix}").write_bytes(cv2.imencode(suffix, image)[1].tobytes())
    assert read_image(folder / f"f{suffix}").dtype == np.float32
    summary = segment(folder, model=seg_model, out=tmp_path / "o")
    assert summary["frames"] == 1 and summary["frames_failed"] == 0
    assert read_mask_png(tmp_path / "o" / "masks" / "f.png").min() == 2


def test_float_pixels_follow_the_0_to_1_convention_and_other_depths_are_named():
    pixels = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan, np.inf, 1 / 255]], np.float32)
    assert to_bgr8(pixels).tolist() == [[0, 128, 255, 255, 0, 0, 255, 1]]
    assert to_bgr8(pixels.astype(np.float64)).tolist() == to_bgr8(pixels).tolist()
    with pytest.raises(BadInputError, match="int16 pixels have no agreed range"):
        to_bgr8(np.zeros((2, 2), np.int16))


# -- 11. one line, exit 2, never a traceback ------------------------------------------------------

def _model_with_contract(path, text):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["scores"])], "m",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 8, 8, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgeseg", text
    onnx.save(model, str(path))
    return path


def _one_line(capsys, code, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert all(needle in lines[0] for needle in needles), lines[0]


def test_bad_numbers_and_deep_nesting_stop_segment_and_calibrate_with_one_line(seg_model, tmp_path, kit, capsys):
    from edgeseg.cli import main

    image = tmp_path / "a.png"
    _png(image, kit.colour_frame(32, 32, [kit.RED]))
    run = ["segment", str(image), "--out", str(tmp_path / "o"), "--no-progress", "--model"]
    for flag, value, key in (("--scale", "nan", "input.scale"), ("--mean", "inf", "input.mean"),
                             ("--std", "1,nan,1", "input.std")):
        _one_line(capsys, main([*run, str(seg_model), flag, value]), key, flag, "finite")
    contract = {"kind": "segmentation", "input": {"height": 8, "width": 8, "channels": 3, "mean": [float("nan")]},
                "output": {"name": "scores", "activation": "softmax", "classes": ["r", "g", "b"]}}
    nan_model = _model_with_contract(tmp_path / "nan.onnx", json.dumps(contract))
    _one_line(capsys, main([*run, str(nan_model)]), "input.mean", "finite")
    deep = '{"kind": "segmentation", "source": ' + "[" * 100000 + "]" * 100000 + "}"
    deep_model = _model_with_contract(tmp_path / "deep.onnx", deep)
    _one_line(capsys, main([*run, str(deep_model)]), "nested too deep")
    _one_line(capsys, main(["calibrate", str(deep_model), "--data", str(tmp_path), "-o", str(tmp_path / "q.onnx")]),
              "nested too deep")
    _one_line(capsys, main(["calibrate", str(seg_model), "--data", str(tmp_path), "-o", str(tmp_path / "q.onnx"),
                            "--max-drop", "nan"]), "--max-drop must be a number of points >= 0")
