"""One loop, one record format: every kind of source takes every option and writes the same records.

Real servers on 127.0.0.1 (ffmpeg serving MPEG-TS over TCP: the serve_tcp fixture of conftest.py), real videos,
real ONNX sessions.
"""

import json
import threading
import time

import cv2
import pytest

from edgeseg.runtime import EdgesegError, SegmentOptions, expand, read_list, records, segment

def _stop_after(frames, stop, sources=1):
    """A callback that sets ``stop`` once each of ``sources`` sources has given ``frames`` frames."""
    seen: dict[str, list[int]] = {}

    def count(result):
        seen.setdefault(result.stream, []).append(result.frame.index)
        if len(seen) >= sources and all(len(indices) >= frames for indices in seen.values()):
            stop.set()
    return count, seen


def _records(folder):
    return [json.loads(line) for path in sorted(folder.glob("frames*.jsonl")) for line in path.read_text().splitlines()]


@pytest.mark.timeout(120)
def test_a_stream_with_and_without_the_live_page_writes_the_same_records(serve_tcp, tmp_path, seg_model):
    shapes = []
    for serve in (None, 0):
        url, stop = serve_tcp(), threading.Event()
        count, _ = _stop_after(6, stop)
        out = tmp_path / f"serve-{serve}"
        summary = segment(url, model=seg_model, out=out, stop=stop, on_result=count, serve=serve)
        (report,) = summary["sources"].values()
        lines = _records(out)
        assert len(lines) == summary["frames"] >= 6 and not records.check_summary(summary)
        assert all(not records.check_record(line) for line in lines)
        shapes.append((sorted(summary), sorted(report), sorted(lines[0]), sorted(report["stream"])))
        assert (summary["serve"] is not None) == (serve is not None)
    assert shapes[0] == shapes[1]  # one record format, whichever way the run was started


@pytest.mark.timeout(120)
def test_resume_of_a_stream_list_goes_on_with_new_numbered_files(serve_tcp, tmp_path, seg_model):
    listing = tmp_path / "cams.txt"
    urls = [serve_tcp(), serve_tcp()]
    listing.write_text(f"door={urls[0]}\nyard={urls[1]}\n")
    out = tmp_path / "out"
    stop = threading.Event()
    count, _ = _stop_after(4, stop, sources=2)
    first = segment(str(listing), model=seg_model, out=out, stop=stop, on_result=count)
    assert first["interrupted"] and set(first["sources"]) == {"door", "yard"}
    before = {name: [r["index"] for r in _records(out / name)] for name in ("door", "yard")}
    with pytest.raises(EdgesegError, match="--resume"):
        segment(str(listing), model=seg_model, out=out)
    for url in urls:  # an ffmpeg server serves one client: start them again, on the same ports
        serve_tcp(int(url.rsplit(":", 1)[1]))
    stop = threading.Event()
    count, _ = _stop_after(4, stop, sources=2)
    second = segment(str(listing), model=seg_model, out=out, stop=stop, on_result=count, resume=True)
    for name in ("door", "yard"):
        folder = out / name
        assert sorted(p.name for p in folder.glob("frames*.jsonl")) == ["frames-0000.jsonl", "frames-0001.jsonl"]
        indices = [r["index"] for r in _records(folder)]
        assert indices[:len(before[name])] == before[name]  # the earlier records are kept as they were
        assert indices == sorted(indices) and len(set(indices)) == len(indices)  # new frames after the old ones
        segments = second["sources"][name]["outputs"]["segments"]
        assert [s["segment"] for s in segments] == [1]
        for video in ("overlay-0000.mp4", "overlay-0001.mp4"):
            capture = cv2.VideoCapture(str(folder / video))
            assert capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0, video
            capture.release()
    assert sum(second["sources"][n]["frames"] for n in ("door", "yard")) == second["frames"] >= 8


def test_rotate_cuts_a_video_files_outputs_into_numbered_playable_parts(tmp_path, kit, seg_model):
    video = kit.moving_video(tmp_path / "clip.avi", count=24, fps=10.0)

    def slow(_result):  # a run slow enough for 1 s segments: the clock is the wall clock, as for a camera
        time.sleep(0.1)

    summary = segment(video, model=seg_model, out=tmp_path / "out", rotate=1 / 60, on_result=slow)
    (report,) = summary["sources"].values()
    segments = report["outputs"]["segments"]
    assert len(segments) >= 2 and sum(s["frames"] for s in segments) == 24 == summary["frames"]
    assert [r["index"] for r in _records(tmp_path / "out")] == list(range(24))
    for segment_ in segments:
        capture = cv2.VideoCapture(str(tmp_path / "out" / segment_["video"]))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == segment_["video_frames"] == segment_["frames"]
        capture.release()
    assert all(r["segment"] == s["segment"] for s in segments
               for r in map(json.loads, (tmp_path / "out" / s["jsonl"]).read_text().splitlines()))


def test_a_list_decides_each_line_on_its_own(tmp_path, kit):
    cv2.imwrite(str(tmp_path / "size=large.png"), kit.colour_frame(8, 8, [kit.RED]))
    cv2.imwrite(str(tmp_path / "b.png"), kit.colour_frame(8, 8, [kit.RED]))
    listing = tmp_path / "list.txt"
    # A BOM (Windows editors), a comment, a file whose name holds "=", a named stream, a relative path.
    listing.write_bytes("\ufeff# cameras and pictures\nsize=large.png\ndoor=rtsp://10.0.0.5/s?a=1\nb.png\n".encode())
    entries = read_list(listing)
    assert [(e.name, e.spec) for e in entries] == [(None, str(tmp_path / "size=large.png")),
                                                   ("door", "rtsp://10.0.0.5/s?a=1"), (None, str(tmp_path / "b.png"))]
    with pytest.raises(EdgesegError, match="mixes image files .* put the images in a list of their own"):
        expand([str(listing)])
    pictures = tmp_path / "pictures.txt"
    pictures.write_text("size=large.png\nb.png\n")
    (entry,) = expand([str(pictures)])  # only images: one source, as a folder would be
    assert (entry.name, entry.spec) == ("pictures", str(pictures))


def test_a_recursive_folder_never_reads_the_runs_own_outputs(tmp_path, kit, seg_model):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), kit.colour_frame(8, 8, [kit.RED]))
    out = folder / "out"  # inside the source: its masks and overlays are images too
    first = segment(folder, model=seg_model, out=out, recursive=True)
    again = segment(folder, model=seg_model, out=out, recursive=True, resume=True)
    assert (first["frames"], again["frames"] + again["frames_resumed"]) == (3, 3)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0.png", "1.png", "2.png"]


def test_several_sources_one_failing_to_open_costs_only_itself(tmp_path, kit, seg_model):
    video = kit.moving_video(tmp_path / "good.avi", count=5)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    summary = segment([str(video), str(broken)], model=seg_model, out=tmp_path / "out")
    assert summary["failed"] == ["broken"] and summary["sources"]["good"]["frames"] == 5
    assert "Cannot open video" in summary["sources"]["broken"]["error"]
    with pytest.raises(EdgesegError, match="Cannot open video"):  # alone, it stops the run with its one line
        segment(broken, model=seg_model, out=tmp_path / "alone")


def test_options_that_cannot_apply_to_a_kind_of_source_are_refused_in_one_line(tmp_path, kit, seg_model):
    video = kit.moving_video(tmp_path / "v.avi", count=3)
    with pytest.raises(EdgesegError, match="--stride/--start select frames of files; .* live source"):
        segment([str(video), "tcp://127.0.0.1:9"], model=seg_model, out=tmp_path / "a", stride=2)
    with pytest.raises(EdgesegError, match="--show opens one window"):
        segment([str(video), str(video)], model=seg_model, out=tmp_path / "b", show=True)
    with pytest.raises(EdgesegError, match="rotate"):
        SegmentOptions(rotate=0)


def test_a_malformed_url_or_a_missing_camera_among_several_sources_stops_the_run_at_once(tmp_path, kit, seg_model):
    video = kit.moving_video(tmp_path / "v.avi", count=3)
    for bad, message in (("rtsp://cam:99999/s", "port '99999' is not a number"), ("tcp://127.0.0.1 :9/", "a space"),
                         ("57", "No webcam 57")):
        with pytest.raises(EdgesegError, match=message):
            segment([str(video), bad], model=seg_model, out=tmp_path / "out")
        assert not (tmp_path / "out").exists()  # refused before anything was opened or written
