"""``edgeseg serve``: the subcommand. Imports only argparse at import time (``edgeseg --help`` stays instant)."""

from __future__ import annotations

import argparse
from typing import Any

_EPILOG = """\
Endpoints ({name} is a model's name: NAME= before its path, else the file's stem, or its folder's
name for model.onnx): the Open Inference Protocol v2 (KServe, Triton, OpenVINO Model Server speak
it; the stock tritonclient works): GET /v2/health/live, /v2/health/ready, /v2/models/{name}
(tensors, and the contract's preprocessing under "edgeseg"), /v2/models/{name}/ready,
POST /v2/models/{name}/infer (JSON or binary tensors; outputs: the model's, and class_ids);
POST /v1/models/{name}/segment with a JPEG/PNG (raw body or multipart field "image") -> JSON class
fractions, or the palette PNG mask with "Accept: image/png"; GET /metrics (Prometheus).
--grpc-port serves the same protocol over gRPC (tritonclient.grpc).

Concurrent requests for a model are batched into one inference call (--max-batch, --max-delay-ms).
Binds 127.0.0.1 unless --host; --token/--token-file require "Authorization: Bearer TOKEN" on all but
/v2/health. SIGTERM or Ctrl-C: stop accepting, finish the requests in flight (--drain s), exit 0.

examples:
  edgeseg serve samples/models/fcn8/model.onnx --port 8000
  curl -s --data-binary @samples/folder/scene_000.png localhost:8000/v1/models/fcn8/segment
  edgeseg serve a=fcn8.onnx b=fcn8.int8.onnx --host 0.0.0.0 --token-file token.txt --tls-cert c.pem --tls-key k.pem
  edgeseg serve fcn8.onnx --ray local --replicas 2"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve models over HTTP: Open Inference Protocol v2, a segment endpoint, dynamic batching",
        description="Serve ONNX models as an inference service other programs call: the Open Inference\n"
                    "Protocol v2 over HTTP (and gRPC) and an image-in, mask-out segment endpoint, with dynamic\n"
                    "batching, Prometheus metrics, request limits and bearer-token auth; on this machine or as\n"
                    "Ray Serve replicas.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="[NAME=]MODEL.onnx", help="the models to serve, one or more")
    _network_options(parser)
    _batching_options(parser)
    _inference_options(parser)
    _scaleout_options(parser)
    parser.set_defaults(func=_run)


def _network_options(parser: argparse.ArgumentParser) -> None:
    """Where it listens, and who may call it."""
    net = parser.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    net.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port, logged)")
    net.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                     help="also serve the protocol's gRPC form on PORT (tritonclient.grpc; pip install "
                          "'edgeseg[grpc]'; not with --ray) (default: off)")
    net.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on everything but "
                     "/v2/health (visible in ps: prefer --token-file)")
    net.add_argument("--token-file", default=None, metavar="FILE", help="read the token from FILE's first line")
    net.add_argument("--tls-cert", default=None, metavar="PEM",
                     help="serve HTTPS with this certificate (and --tls-key)")
    net.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key, unencrypted")


def _batching_options(parser: argparse.ArgumentParser) -> None:
    """How requests share inference calls, and what is refused before it costs anything."""
    batch = parser.add_argument_group("batching and limits")
    batch.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="most items in one inference call; also the largest batch a v2 request may carry "
                            "(default: 8)")
    batch.add_argument("--max-delay-ms", type=float, default=5.0, metavar="MS",
                       help="how long the oldest waiting request waits for others to share its call; only an idle "
                            "server waits, a busy one takes what has queued (default: 5)")
    batch.add_argument("--max-queue", type=int, default=64, metavar="N",
                       help="requests per model admitted at once; more get 503 with Retry-After (default: 64)")
    batch.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB",
                       help="largest request body; more gets 413 (default: 16)")
    batch.add_argument("--max-pixels", type=int, default=25_000_000, metavar="N",
                       help="largest image, read from its header before decoding; more gets 400 (default: 25000000)")
    batch.add_argument("--drain", type=float, default=1.0, metavar="S",
                       help="on SIGTERM/Ctrl-C, seconds the requests in flight get to finish (default: 1)")


def _inference_options(parser: argparse.ArgumentParser) -> None:
    """The engine each model runs on, as `edgeseg segment` chooses it."""
    run = parser.add_argument_group("inference (as for edgeseg segment)")
    run.add_argument("--engine", choices=("onnxruntime", "openvino", "auto"), default=None,
                     help="auto: what `edgeseg tune` measured fastest here, else openvino on a bf16 CPU with openvino "
                          "installed, else onnxruntime (default: auto)")
    run.add_argument("--precision", choices=("auto", "f32"), default="auto", help="openvino only (default: auto)")
    run.add_argument("--provider", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
                     help="onnxruntime provider (default: auto)")
    run.add_argument("--strict", action="store_true",
                     help="with cuda/tensorrt: fail at start if a node would run on the CPU")
    run.add_argument("--threads", type=int, default=None, metavar="N", help="inference threads (default: the engine's)")
    run.add_argument("--optimization", choices=("all", "extended", "basic", "disable"), default="all",
                     help="onnxruntime graph optimization level (default: all)")


def _scaleout_options(parser: argparse.ArgumentParser) -> None:
    """Ray Serve replicas instead of this process."""
    ray = parser.add_argument_group("scale-out (Ray Serve; pip install 'edgeseg[ray,serve]')")
    ray.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="deploy as Ray Serve replicas: local (a new Ray on this machine), auto (RAY_ADDRESS / the "
                          "running cluster) or ray://host:port")
    ray.add_argument("--replicas", type=int, default=1, metavar="N",
                     help="--ray: replicas, each with its own models and batchers (default: 1)")
    ray.add_argument("--max-replicas", type=int, default=None, metavar="N",
                     help="--ray: autoscale between --replicas and N by requests in flight (default: fixed)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C",
                     help="--ray: CPUs each replica reserves (default: 1)")


def _run(args: argparse.Namespace) -> int:
    import logging

    from edgeseg.serve._options import ServeOptions, parse_models, read_token

    # uvicorn's startup and shutdown lines repeat ours; its errors still show.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    options = ServeOptions(
        host=args.host, port=args.port, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue, max_body_mb=args.max_body_mb, max_pixels=args.max_pixels,
        token=read_token(token=args.token, token_file=args.token_file), tls_cert=args.tls_cert, tls_key=args.tls_key,
        drain=args.drain, grpc_port=args.grpc_port, engine=args.engine, provider=args.provider, threads=args.threads,
        precision=args.precision, optimization=args.optimization, strict=args.strict)
    specs = parse_models(args.models)
    if args.ray:
        if args.grpc_port is not None:
            from edgeseg.runtime import EdgesegError
            raise EdgesegError("--grpc-port serves gRPC on this machine; with --ray, Ray Serve's proxy takes HTTP "
                               "only here. Drop one of them.")
        from edgeseg.serve._ray import RayOptions, serve_on_ray

        serve_on_ray(specs, options, RayOptions(address=args.ray, replicas=args.replicas,
                                                max_replicas=args.max_replicas, cpus=args.cpus_per_replica))
        return 0
    from edgeseg.serve._server import serve

    serve(specs, options)
    return 0
