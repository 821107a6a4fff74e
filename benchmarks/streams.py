"""N copies of a real video served as live streams: one edgeseg process for all N against N processes.

Each copy is ffmpeg looping ``samples/scenes.avi`` at its frame rate as MPEG-TS over TCP on
127.0.0.1. Per configuration, runs ``edgeseg segment`` for ``--seconds`` and reads each stream's
fps and capture-to-result latency (p50/p95) from summary.json. With ``--soak SECONDS``: 2 streams
in one process with its RSS sampled every 10 s, written to ``--soak-out`` after every sample.
Usage::

    python benchmarks/streams.py --seconds 12 --out benchmarks/results/streams.json
    python benchmarks/streams.py --counts "" --soak 1800   # the 30-minute soak
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
    return json.loads((out / "summary.json").read_text())["sources"]


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
                               "dropped": r["stream"]["dropped"]} for name, r in reports.items()}
    return result


def soak(seconds: float, work: Path, out: Path, machine: str) -> dict:
    """2 streams in one process for ``seconds``, RSS every 10 s, ``out`` rewritten after each sample.

    Writing as it goes means a soak cut short still leaves what it measured.
    """
    servers, urls = serve(2)
    run = segment(urls[:2], work / "soak")
    process, samples, started = psutil.Process(run.pid), [], time.monotonic()
    report = {"machine": machine, "video": "samples/scenes.avi (looped at its frame rate), 2 streams",
              "model": "samples/models/fcn8/model.onnx", "seconds_planned": seconds, "rss_mb": samples}
    try:
        while time.monotonic() - started < seconds and run.poll() is None:
            time.sleep(10)
            samples.append((round(time.monotonic() - started, 1), round(process.memory_info().rss / 2**20, 1)))
            report.update(growth_of(samples), finished=False)
            write(out, report)
    finally:
        stop([run])
        for server in servers:
            server.kill()
    report.update(growth_of(samples), finished=True, exit_code=run.returncode,
                  streams={k: {"frames": v["frames"], "fps": v["fps"], "latency_ms": v["latency_ms"],
                               "dropped": v["stream"]["dropped"], "reconnects": v["stream"]["reconnects"],
                               "stalls": v["stream"]["stalls"]}
                           for k, v in streams_of(work / "soak").items()})
    write(out, report)
    return report


def growth_of(samples: list[tuple[float, float]]) -> dict:
    # The first 30 s load the model and fill buffers: growth is measured from there on.
    after_warmup = [mb for t, mb in samples if t >= 30] or [mb for _, mb in samples]
    return {"seconds_measured": samples[-1][0], "rss_first_mb": samples[0][1], "rss_last_mb": samples[-1][1],
            "rss_max_mb": max(mb for _, mb in samples),
            "growth_after_30s_mb": round(after_warmup[-1] - after_warmup[0], 1)}


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def cpu_name() -> str:
    """CPU model plus the flags that matter for inference (AMX, AVX512-VNNI, bf16) from /proc/cpuinfo."""
    name, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wanted = [f for f in ("amx_tile", "amx_int8", "amx_bf16", "avx512_vnni", "avx512_bf16") if f in flags]
    return f"{name} ({' '.join(wanted)})" if wanted else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--soak", type=float, default=0.0, help="soak seconds (0: no soak); the issue asks 1800")
    parser.add_argument("--counts", default="1,2,4", help="stream counts to compare; empty: soak only")
    parser.add_argument("--out", default="benchmarks/results/streams.json")
    parser.add_argument("--soak-out", default="benchmarks/results/streams_soak.json")
    args = parser.parse_args()
    machine = f"{cpu_name()}, {psutil.cpu_count()} vCPUs, shared with other jobs while measured"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.counts:
            report = {"machine": machine, "video": "samples/scenes.avi (looped at its frame rate)",
                      "model": "samples/models/fcn8/model.onnx", "seconds_per_config": args.seconds,
                      "configs": {n: one_config(int(n), args.seconds, work) for n in args.counts.split(",")}}
            write(Path(args.out), report)
            print(json.dumps(report, indent=1))
        if args.soak > 0:
            print(json.dumps(soak(args.soak, work, Path(args.soak_out), machine), indent=1))


if __name__ == "__main__":
    main()
