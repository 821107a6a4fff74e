"""Property-based: arbitrary bytes as an image or a video, arbitrary JSON as a contract -> a result or one clear error."""

import json
import struct
import subprocess
import sys
import textwrap

import cv2
import numpy as np
from edgeseg.runtime import BadInputError, Contract, EdgesegError
from edgeseg.runtime._frames import read_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _real(suffix):
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    return cv2.imencode(suffix, image)[1].tobytes()


_SEEDS = [_real(s) for s in (".png", ".jpg", ".bmp", ".tif", ".webp", ".gif", ".ppm")]


@st.composite
def image_bytes(draw):
    """Pure noise, or a real file of some format damaged: cut, bytes flipped, or noise after a real header."""
    how = draw(st.sampled_from(["noise", "cut", "flip", "header"]))
    if how == "noise":
        return draw(st.binary(max_size=256))
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return bytes(data[: draw(st.integers(2, 40))]) + draw(st.binary(max_size=200))


@_SETTINGS
@given(data=image_bytes())
def test_any_bytes_as_an_image_give_a_frame_or_one_bad_input_error(data, tmp_path):
    path = tmp_path / "x.img"
    path.write_bytes(data)
    try:
        image = read_image(path, max_pixels=4_000_000)
    except BadInputError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert isinstance(image, np.ndarray) and image.size > 0


# TIFF field types: BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT, SLONG, SRATIONAL, FLOAT,
# DOUBLE, IFD, LONG8, SLONG8, IFD8, and one that does not exist.
_TIFF_KINDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18, 99)


@st.composite
def tiff_size_claims(draw):
    """A small real TIFF whose ImageWidth/ImageLength entries get any type, count and value a crafted file can
    hold (classic or BigTIFF, either byte order, the tag possibly given twice)."""
    order = draw(st.sampled_from(["<", ">"]))
    big = draw(st.booleans())
    slot = 8 if big else 4
    entries = []
    for tag in [256, 257] + ([draw(st.sampled_from([256, 257]))] if draw(st.booleans()) else []):
        kind, count = draw(st.sampled_from(_TIFF_KINDS)), draw(st.sampled_from([1, 1, 1, 2, 0]))
        value = draw(st.integers(0, 2 ** (8 * slot) - 1)).to_bytes(slot, "little" if order == "<" else "big")
        head = struct.pack(order + "HH", tag, kind) + struct.pack(order + ("Q" if big else "I"), count)
        entries.append(head + value)
    entries += [struct.pack(order + "HH", 258, 3) + struct.pack(order + ("Q" if big else "I"), 1) + b"\0" * slot]
    entries.sort(key=lambda e: struct.unpack(order + "H", e[:2])[0])
    if big:
        ifd = struct.pack(order + "Q", len(entries)) + b"".join(entries) + b"\0" * 8
        head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HHHQ", 43, 8, 0, 16)
    else:
        ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\0" * 4
        head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 16)
    return head.ljust(16, b"\0") + ifd + bytes(64)


@_SETTINGS
@given(data=tiff_size_claims())
def test_any_tiff_size_claim_is_read_or_refused_never_decoded_past_the_limit(data, tmp_path):
    # The pixel bombs of issue 22 hid their size in a type the header check skipped; none may pass now.
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    try:
        image = read_image(path, max_pixels=1_000_000)
    except BadInputError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert image.shape[0] * image.shape[1] <= 1_000_000


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_KEYS = st.sampled_from(["kind", "input", "output", "format", "source", "latent", "verified", "calibration"])
_INPUT_KEYS = st.sampled_from(["height", "width", "channels", "color", "scale", "mean", "std", "resize", "layout", "name"])


_NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**70, 2**70)


@st.composite
def contracts(draw):
    """JSON-ish values, mostly shaped like a contract with some keys holding arbitrary values: non-finite
    numbers in the preprocessing, and values nested from a few to many thousand levels deep."""
    if draw(st.booleans()):
        return draw(_JSON)
    data = {"kind": "segmentation", "input": {"height": 8, "width": 8, "channels": 3}, "output": {"classes": ["a"]}}
    for key, value in draw(st.dictionaries(_INPUT_KEYS, _JSON, max_size=3)).items():
        data["input"][key] = value
    for key, value in draw(st.dictionaries(_KEYS, _JSON, max_size=2)).items():
        data[key] = value
    for key in draw(st.lists(st.sampled_from(["scale", "mean", "std"]), max_size=2, unique=True)):
        if isinstance(data["input"], dict):
            data["input"][key] = draw(_NUMBERS) if key == "scale" else draw(st.lists(_NUMBERS, min_size=1,
                                                                                      max_size=3))
    if draw(st.booleans()):
        depth = draw(st.sampled_from([2, 31, 33, 500, 5000]))
        data[draw(st.sampled_from(["source", "latent", "extension"]))] = {"x": _nested(depth)}
    return data


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=200, deadline=None)
@given(data=contracts())
def test_any_json_as_a_contract_gives_a_contract_or_one_edgeseg_error(data):
    try:
        text = json.dumps(data)
    except RecursionError:  # too deep for json.dumps itself: the file would hold such text all the same
        return
    try:
        contract = Contract.from_json(text)
    except EdgesegError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(contract, Contract)
        numbers = (contract.input.scale, *contract.input.mean, *contract.input.std)
        assert all(np.isfinite(numbers))  # NaN or inf would make every input tensor NaN


_VIDEO_CHILD = textwrap.dedent('''
    import sys, tempfile, pathlib
    import cv2, numpy as np
    from hypothesis import given, settings, strategies as st
    from edgeseg.runtime import EdgesegError
    from edgeseg.runtime._frames import video_frames

    folder = pathlib.Path(tempfile.mkdtemp())
    writer = cv2.VideoWriter(str(folder / "seed.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (16, 16))
    for i in range(3):
        writer.write(np.full((16, 16, 3), i * 60, np.uint8))
    writer.release()
    seed = (folder / "seed.avi").read_bytes()

    @settings(max_examples=int(sys.argv[1]), deadline=None, database=None)
    @given(cut=st.integers(0, len(seed)), noise=st.binary(max_size=64), at=st.integers(0, len(seed) - 1),
           suffix=st.sampled_from([".avi", ".mp4", ".mkv", ".gif"]))
    def check(cut, noise, at, suffix):
        data = bytearray(seed[:cut])
        data[at:at + len(noise)] = noise
        path = folder / ("v" + suffix)
        path.write_bytes(bytes(data))
        try:
            frames = list(video_frames(path))
        except EdgesegError as error:
            assert "\\n" not in str(error)
        else:
            assert all(f.image is not None and f.image.ndim == 3 for f in frames)

    check()
    print("survived")
''')


def test_any_bytes_as_a_video_give_frames_or_one_clear_error(tmp_path):
    # In a child: a decoder crash must fail this test, not end pytest.
    result = subprocess.run(check=False, args=[sys.executable, "-c", _VIDEO_CHILD, "25"], capture_output=True, text=True,
                            errors="backslashreplace", timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("survived"), result.stderr[-3000:]
