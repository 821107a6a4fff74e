"""Property-based: arbitrary bytes as an image or a video, arbitrary JSON as a contract -> a result or one clear error."""

import json
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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_KEYS = st.sampled_from(["kind", "input", "output", "format", "source", "latent", "verified", "calibration"])
_INPUT_KEYS = st.sampled_from(["height", "width", "channels", "color", "scale", "mean", "std", "resize", "layout", "name"])


@st.composite
def contracts(draw):
    """JSON-ish values, mostly shaped like a contract with some keys holding arbitrary values."""
    if draw(st.booleans()):
        return draw(_JSON)
    data = {"kind": "segmentation", "input": {"height": 8, "width": 8, "channels": 3}, "output": {"classes": ["a"]}}
    for key, value in draw(st.dictionaries(_INPUT_KEYS, _JSON, max_size=3)).items():
        data["input"][key] = value
    for key, value in draw(st.dictionaries(_KEYS, _JSON, max_size=2)).items():
        data[key] = value
    return data


@settings(max_examples=200, deadline=None)
@given(data=contracts())
def test_any_json_as_a_contract_gives_a_contract_or_one_edgeseg_error(data):
    try:
        contract = Contract.from_json(json.dumps(data))
    except EdgesegError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(contract, Contract)


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
