"""How long `edgeseg segment` takes from SIGTERM (or SIGINT) to its exit, in each state a run can be in.

Issue 22 found states where a signal took 32-624 s (or was ignored): a lone stream in reconnect backoff, a
stream that accepts and never sends, --resume checking a big job, --overwrite deleting one, a huge image
decoding, and Python still importing. Each state is made for real (servers on 127.0.0.1, a real 5,000-image
run, a real 9,000 x 9,000 JPEG), the signal is sent once the run is in that state, and the time to the
process's exit is measured, best and worst of --repeats. The machine's load is recorded with the figures.

    python benchmarks/signals.py --repeats 5 --json benchmarks/results/signals.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "samples" / "models" / "fcn8" / "model.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeseg", "segment", *args, "--model", str(MODEL),
                             "--engine", "onnxruntime", "--no-progress"], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, bufsize=1)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        if text in line or time.monotonic() > deadline:
            return


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[float, int]:
    import threading

    drain = threading.Thread(target=process.stderr.read, daemon=True)  # the child never blocks on a full pipe
    drain.start()
    sent = time.monotonic()
    process.send_signal(sig)
    code = process.wait(timeout=600)
    return time.monotonic() - sent, code


def images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[:, 16:] = (0, 0, 255)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:05d}.png"), picture)
    return folder


def state_backoff(work: Path) -> tuple[float, int]:
    process = start([f"tcp://127.0.0.1:{free_port()}", "--out", str(work / "out"), "--reconnect", "50"])
    wait_for_line(process, "reconnecting in")
    return stop(process)


def state_silent_stream(work: Path) -> tuple[float, int]:
    silent = socket.socket()  # accepts and never sends: the open blocks for its whole timeout
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        process = start([f"tcp://127.0.0.1:{silent.getsockname()[1]}", "--out", str(work / "out"),
                         "--open-timeout", "30", "--stall-timeout", "30"])
        wait_for(lambda: (work / "out" / ".edgeseg" / "run.json").exists())
        time.sleep(2.0)
        return stop(process)
    finally:
        silent.close()


def state_resume(work: Path, done: Path) -> tuple[float, int]:
    out = work / "out"
    subprocess.run(["cp", "-r", str(done), str(out)], check=True)
    process = start([str(work.parent / "images"), "--out", str(out), "--resume"])
    wait_for(lambda: (out / ".edgeseg" / "run.json").stat().st_mtime > (done / ".edgeseg" / "run.json").stat().st_mtime
             if (out / ".edgeseg" / "run.json").exists() else False)
    time.sleep(0.5)
    return stop(process)


def state_overwrite(work: Path, done: Path) -> tuple[float, int]:
    out = work / "out"
    subprocess.run(["cp", "-r", str(done), str(out)], check=True)
    process = start([str(work.parent / "images"), "--out", str(out), "--overwrite"])
    wait_for(lambda: any((out / ".edgeseg").glob("old-*")))
    time.sleep(0.3)
    return stop(process)


def state_huge_image(work: Path, huge: Path) -> tuple[float, int]:
    process = start([str(huge), "--out", str(work / "out")])
    wait_for(lambda: (work / "out" / ".edgeseg" / "run.json").exists())
    time.sleep(0.5)  # decoding 81 megapixels of noise takes seconds
    return stop(process)


def state_startup(work: Path) -> tuple[float, int]:
    process = start([str(work.parent / "images"), "--out", str(work / "out")])
    time.sleep(0.3)  # Python is still importing
    return stop(process, signal.SIGINT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeseg-signals-") as tmp:
        base = Path(tmp)
        images(base / "images", args.images)
        done = base / "done"
        subprocess.run([sys.executable, "-m", "edgeseg", "segment", str(base / "images"), "--out", str(done),
                        "--model", str(MODEL), "--engine", "onnxruntime", "--no-progress"], check=True,
                       stderr=subprocess.DEVNULL, cwd=ROOT)
        huge = base / "huge.jpg"  # 81 megapixels of noise (under the 100-megapixel cap): seconds to decode
        cv2.imwrite(str(huge), np.random.default_rng(0).integers(0, 256, (9000, 9000, 3), dtype=np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        states = {"reconnect backoff (one stream)": lambda w: state_backoff(w),
                  "stream that accepts and never sends": lambda w: state_silent_stream(w),
                  f"--resume of a {args.images}-image run": lambda w: state_resume(w, done),
                  f"--overwrite of a {args.images}-image run": lambda w: state_overwrite(w, done),
                  "decoding a 9000x9000 JPEG of noise": lambda w: state_huge_image(w, huge),
                  "Python importing (SIGINT at 0.3 s)": lambda w: state_startup(w)}
        results = {}
        for name, measure in states.items():
            times, codes = [], []
            for repeat in range(args.repeats):
                work = base / f"w-{len(results)}-{repeat}"
                work.mkdir()
                took, code = measure(work)
                times.append(round(took, 3))
                codes.append(code)
            results[name] = {"best_s": min(times), "worst_s": max(times), "seconds": times, "exit_codes": codes}
            print(f"{name:<42} best {min(times):6.2f} s  worst {max(times):6.2f} s  exit {sorted(set(codes))}")
    report = {"machine": _machine(), "load_average": os.getloadavg(), "repeats": args.repeats, "states": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} vCPUs"
    return "unknown"


if __name__ == "__main__":
    main()
