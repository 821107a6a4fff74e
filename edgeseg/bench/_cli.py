"""``edgeseg bench``: side-by-side throughput of every way to run one model (registers the subcommand)."""

from __future__ import annotations

import argparse
from pathlib import Path

_RUNNER_HELP = (
    "comma-separated runners (default: all that apply to the model's kind): keras-predict (autoencoders: Keras' "
    "default batch of 32), keras-predict-1 (autoencoders: one image per call), keras-call, ort-plain, opencv-dnn, openvino, "
    "openvino-f32, openvino-int8 (OpenVINO on the --int8 file), edgeseg (the runtime at its defaults, as "
    "`edgeseg segment` runs), edgeseg-int8 (the same on the --int8 file), edgeseg-fast (the fastest configuration "
    "edgeseg offers here with >= 99%% agreement: OpenVINO on the --int8 file, or on the FP32 file at its default "
    "precision (bf16 where the CPU has it) without one, batch 4, throughput, class ids fused into the graph; "
    "autoencoders: onnxruntime as edgeseg); one that cannot run here is reported as skipped with the reason"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="side-by-side throughput against other ways to run the same model",
        description=(
            "Run the same model on the same frames with every runner (Keras, plain onnxruntime, OpenCV DNN, "
            "OpenVINO, edgeseg), each doing the same work per frame (decode, preprocess, infer, argmax, "
            "write a mask PNG) in its own process; repeats are interleaved. Reports end-to-end and "
            "inference-only fps, per-stage ms, peak memory, mask agreement with Keras FP32, FLOPs per "
            "frame, GFLOP/s and efficiency against the machine's matmul ceiling measured in the same run."
        ),
    )
    parser.add_argument("--model", required=True, type=Path,
                        help="the model: an FP32 .onnx exported by edgeseg (then give --keras for Keras runners "
                             "and agreement), or a .keras file, exported and calibrated into a temp folder first")
    parser.add_argument("--keras", type=Path, default=None,
                        help="the .keras file the ONNX model came from (default: none; Keras runners are "
                             "skipped and agreement is measured against FP32 onnxruntime)")
    parser.add_argument("--int8", type=Path, default=None,
                        help="the calibrated INT8 .onnx for edgeseg-int8 (default: none, the runner is skipped; "
                             "calibrated from --source when --model is a .keras)")
    parser.add_argument("--source", required=True,
                        help="a local video file or folder of images (for an autoencoder: a folder of digits); "
                             "every runner reads the same frames")
    parser.add_argument("--runners", default=None, help=_RUNNER_HELP)
    parser.add_argument("--frames", type=int, default=30,
                        help="frames (autoencoders: images) per run (default 30; keras-predict-1 runs at most 100)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per runner (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for every runner (default: each library's own default)")
    parser.add_argument("--json", required=True, type=Path, metavar="FILE",
                        help="write the JSON report here (e.g. bench.json)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="also write the markdown table here (default: none)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep each run's masks and results here (default: a new temp folder)")
    parser.add_argument("--precision", choices=("auto", "fp16"), default="auto",
                        help="fp16: also run edgeseg-fp16, the runtime in fp16 on onnxruntime's CUDA provider; refused "
                             "in one line where onnxruntime has no CUDA (default: auto, each runner's own precision)")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip measuring the matmul ceiling (efficiency is then not reported)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import tempfile

    from edgeseg.bench._bench import BenchConfig, markdown_table, prepare_models, run_bench
    from edgeseg.runtime.files import write_json_atomic, write_text_atomic

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edgeseg-bench-"))
    models = prepare_models(model=args.model, keras=args.keras, int8=args.int8, source=args.source,
                            work=work / "models")
    runners = tuple(r.strip() for r in args.runners.split(",") if r.strip()) if args.runners else None
    config = BenchConfig(
        model=models.onnx, keras=models.keras, int8=models.int8, source=args.source, runners=runners,
        frames=args.frames, repeats=args.repeats, threads=args.threads, work_dir=work,
        measure_ceiling=not args.no_ceiling, progress=not args.quiet, precision=args.precision,
    )
    report = run_bench(config)
    report["notes"] = models.notes
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, report)
    table = markdown_table(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.markdown, table)
    print(table, end="")
    return 0
