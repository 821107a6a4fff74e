"""``edgeseg bench``: the same model and frames through several engines side by side.

Example::

    from edgeseg.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(model=Path("fcn8.onnx"), source="clip.mp4", runners=("ort-plain", "edgeseg")))
"""

from edgeseg.bench._bench import BenchConfig, machine_info, markdown_table, mask_agreement, run_bench, run_worker

__all__ = ["BenchConfig", "machine_info", "markdown_table", "mask_agreement", "run_bench", "run_worker"]
