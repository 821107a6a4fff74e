"""N copies of a real video served as live streams: one edgeseg process for all N against N processes.

Each copy is ffmpeg looping ``samples/scenes.avi`` at its frame rate as MPEG-TS over TCP on
127.0.0.1. Per configuration, runs ``edgeseg segment`` for ``--seconds`` and reads each stream's
fps and capture-to-result latency (p50/p95) from summary.json. Then a soak: 2 streams in one
process for ``--soak`` seconds with its RSS sampled every 5 s (a short soak, not the 30 minutes
the issue asks for). Usage::

    python benchmarks/streams.py --seconds 12 --soak 180 --out benchmarks/results/streams.json
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import psutil

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "samples" / "scenes.avi"
MODEL = ROOT / "samples" / "models" / "fcn8" / "model.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(n: int) -> tuple[list[subprocess.Popen], list[str]]:
    servers, urls = [], []
    for i in range(n):
        port = free_port()
        servers.append(subprocess.Popen(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "quiet", "-re", "-stream_loop", "-1",
             "-i", str(VIDEO), "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"]))
        urls.append(f"cam{i}=tcp://127.0.0.1:{port}")
    time.sleep(1.0)
    return servers, urls


def segment(sources: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeseg", "segment", *sources, "--model", str(MODEL), "--out", str(out),
                             "--write", "jsonl", "--no-progress", "--stall-timeout", "5"],
                            stderr=subprocess.DEVNULL)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


def streams_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["streams"]


def one_config(n: int, seconds: float, work: Path) -> dict:
    result = {}
    for mode in ("one_process", "n_processes"):
        servers, urls = serve(n)
        outs = [work / f"{mode}-{n}-{i}" for i in range(n if mode == "n_processes" else 1)]
        runs = ([segment(urls, outs[0])] if mode == "one_process"
                else [segment([url], out) for url, out in zip(urls, outs)])
        time.sleep(seconds)
        stop(runs)
        for server in servers:
            server.kill()
        reports = {name: r for out in outs for name, r in streams_of(out).items()}
        result[mode] = {name: {"fps": r["fps"], "latency_ms": r["latency_ms"], "frames": r["frames"],
                               "dropped": r["dropped"]} for name, r in reports.items()}
    return result


def soak(seconds: float, work: Path) -> dict:
    servers, urls = serve(2)
    run = segment(urls[:2], work / "soak")
    process, samples, started = psutil.Process(run.pid), [], time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(5)
        samples.append((round(time.monotonic() - started, 1), round(process.memory_info().rss / 2**20, 1)))
    stop([run])
    for server in servers:
        server.kill()
    rss = [mb for _, mb in samples]
    after_warmup = [mb for t, mb in samples if t >= 30] or rss
    return {"seconds": seconds, "rss_mb": samples, "growth_after_30s_mb": round(after_warmup[-1] - after_warmup[0], 1),
            "streams": {k: {"frames": v["frames"], "fps": v["fps"], "latency_ms": v["latency_ms"]}
                        for k, v in streams_of(work / "soak").items()}}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--soak", type=float, default=180.0)
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--out", default="benchmarks/results/streams.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report = {"machine": f"{cpu_name()}, {psutil.cpu_count()} vCPUs, shared with other jobs while measured",
                  "video": "samples/scenes.avi (looped at its frame rate)", "model": "samples/models/fcn8/model.onnx",
                  "seconds_per_config": args.seconds,
                  "configs": {n: one_config(int(n), args.seconds, work) for n in args.counts.split(",")}}
        if args.soak > 0:
            report["soak"] = soak(args.soak, work)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
