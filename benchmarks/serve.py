"""``edgeseg serve`` under 1, 8 and 32 concurrent clients, against calling ``Model`` in-process, side by side.

The same work per request both ways: decode a PNG, preprocess by the contract, infer, class ids at the
image's size, class fractions. In-process: C threads share one ``Model`` (it is thread-safe), each calling
``model(decode_image(png))`` in a loop. Served: ``edgeseg serve`` in its own process, C client threads in this
one, each with a keep-alive connection POSTing the PNG to ``/v1/models/NAME/segment``; the server batches
concurrent requests (``--max-batch``, ``--max-delay-ms``). Both sides run the engine ``--engine`` picks
(auto: OpenVINO bf16 on a CPU with bf16, else onnxruntime). Per configuration: requests/s, p50/p95 latency,
the mean batch the server formed (from ``/metrics``), and the ratio served/in-process; ``--rounds`` alternate
the two ways (in-process, served, in-process, ...) and the median round is kept, so a load that comes and
goes on the machine hits both sides alike. OpenVINO Model Server
is compared where an ``ovms`` binary is on PATH (it is not a pip or apt package; see the result's ``ovms``).
Usage::

    python benchmarks/serve.py --model fcn8=samples/models/fcn8/model.onnx:samples/folder/scene_000.png \\
        --model membrane=/tmp/fcn8.onnx:../shared/data/membrane/images/0.png --out benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgeseg.runtime import Model, decode_image

ROOT = Path(__file__).resolve().parents[1]


def run_clients(clients: int, seconds: float, call) -> dict[str, float]:
    """C threads calling ``call(session)`` for ``seconds``; requests/s and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        session = {}
        start.wait()
        while not stop.is_set():
            began = time.perf_counter()
            call(session)
            latencies[i].append(time.perf_counter() - began)
        session.get("close", lambda: None)()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = np.array([x for per in latencies for x in per]) * 1000
    return {"requests": int(every.size), "rps": round(every.size / elapsed, 2),
            "p50_ms": round(float(np.percentile(every, 50)), 2), "p95_ms": round(float(np.percentile(every, 95)), 2)}


def median_round(results: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median requests/s (its latencies with it)."""
    return sorted(results, key=lambda r: r["rps"])[len(results) // 2]


def in_process(model: Model, png: bytes, clients: int, seconds: float) -> dict[str, float]:
    return run_clients(clients, seconds, lambda session: model(decode_image(png)).class_fraction)


class Server:
    def __init__(self, name: str, path: str, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "serve", f"{name}={path}", "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            match = re.search(r" on http://([^/ ]+)/ ", line)
            if match:
                self.host, port = match.group(1).rsplit(":", 1)
                self.port = int(port)
                break
        else:
            raise SystemExit("edgeseg serve did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def post(self, session: dict, path: str, body: bytes) -> bytes:
        if "connection" not in session:
            session["connection"] = http.client.HTTPConnection(self.host, self.port, timeout=120)
            session["close"] = session["connection"].close
        session["connection"].request("POST", path, body=body, headers={"Content-Type": "image/png"})
        response = session["connection"].getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"{response.status}: {data[:200]!r}")
        return data

    def batches(self, name: str) -> tuple[float, float]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        value = lambda series: float(re.search(rf"^{re.escape(series)} (\S+)$", text, re.M).group(1))  # noqa: E731
        return (value(f'edgeseg_serve_batch_size_count{{model="{name}"}}'),
                value(f'edgeseg_serve_batch_size_sum{{model="{name}"}}'))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def served(server: Server, name: str, png: bytes, clients: int, seconds: float) -> dict[str, float]:
    calls0, items0 = server.batches(name)
    result = run_clients(clients, seconds, lambda session: server.post(session, f"/v1/models/{name}/segment", png))
    calls1, items1 = server.batches(name)
    result["mean_batch"] = round((items1 - items0) / max(calls1 - calls0, 1), 2)
    return result


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL.onnx:IMAGE")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    report: dict[str, object] = {"machine": machine(), "load_before": os.getloadavg(), "seconds": args.seconds,
                                 "rounds": args.rounds,
                                 "engine": args.engine, "max_batch": args.max_batch,
                                 "max_delay_ms": args.max_delay_ms, "models": {}}
    report["ovms"] = ("not run: no `ovms` binary on PATH (OpenVINO Model Server is neither a pip nor an apt "
                      "package; it ships as a container image or a release tarball, which this machine cannot fetch)"
                      if shutil.which("ovms") is None else "found but not wired in")
    for item in args.model:
        name, rest = item.split("=", 1)
        path, image = rest.rsplit(":", 1)
        png = Path(image).read_bytes()
        model = Model(path, engine=args.engine)
        model(decode_image(png))  # warm-up
        server = Server(name, path, ["--engine", args.engine, "--max-batch", str(args.max_batch),
                                     "--max-delay-ms", str(args.max_delay_ms)])
        try:
            server.post({}, f"/v1/models/{name}/segment", png)  # warm-up
            rows = {}
            for count in clients:
                rounds = [(in_process(model, png, count, args.seconds), served(server, name, png, count, args.seconds))
                          for _ in range(args.rounds)]
                local = median_round([r[0] for r in rounds])
                remote = median_round([r[1] for r in rounds])
                rows[str(count)] = {"in_process": local, "served": remote,
                                    "ratio_rps": round(remote["rps"] / local["rps"], 3),
                                    "rounds": [{"in_process_rps": a["rps"], "served_rps": b["rps"]} for a, b in rounds]}
                print(f"{name} {count:>2} clients: in-process {local['rps']:.1f} req/s p50 {local['p50_ms']:.1f} "
                      f"p95 {local['p95_ms']:.1f} ms | served {remote['rps']:.1f} req/s p50 {remote['p50_ms']:.1f} "
                      f"p95 {remote['p95_ms']:.1f} ms, batch {remote['mean_batch']:.2f} | "
                      f"x{rows[str(count)]['ratio_rps']:.2f}", flush=True)
        finally:
            server.stop()
        report["models"][name] = {"path": path, "image": image, "engine": model.engine, "precision": model.precision,
                                  "input": [model.contract.input.height, model.contract.input.width],
                                  "clients": rows}
    report["load_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
