"""A served model: the runtime's :class:`Model`, its batcher, and what the protocol says about it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgeseg.runtime import Model, postprocess
from edgeseg.serve._batcher import Batcher
from edgeseg.serve._options import ModelSpec, ServeOptions
from edgeseg.serve._protocol import datatype_of

log = logging.getLogger("edgeseg.serve")

VERSION = "1"
CLASS_IDS = "class_ids"  # the extra output: argmax (or the threshold rule) of the scores, at the model's size


class ServedModel:
    """One model as the service sees it. Loading runs one batch of zeros, which also tells the output's
    dtype and shape (for the metadata) whatever the engine.

    Example::

        served = ServedModel.load(ModelSpec("fcn8", "fcn8.onnx"), ServeOptions())
        served.metadata()["inputs"][0]["shape"]   # [-1, 96, 96, 3]
    """

    def __init__(self, spec: ModelSpec, model: Model, options: ServeOptions) -> None:
        self.name = spec.name
        self.model = model
        self.contract = model.contract
        self.options = options
        spec_in = self.contract.input
        self.input_shape = ([spec_in.height, spec_in.width, spec_in.channels] if spec_in.layout == "NHWC"
                            else [spec_in.channels, spec_in.height, spec_in.width])
        probe = model.run(np.zeros([1, *self.input_shape], np.float32))  # warm-up, and the output's facts
        self.output_dtype = probe.dtype
        self.output_shape = list(probe.shape[1:])
        self.segmentation = self.contract.kind == "segmentation"
        self.ids_shape = list(model.channels_last(probe[0]).shape[:2]) if self.segmentation else []
        self.batcher: Batcher | None = None

    @classmethod
    def load(cls, spec: ModelSpec, options: ServeOptions) -> ServedModel:
        model = Model(spec.path, engine=options.engine, provider=options.provider, threads=options.threads,
                      precision=options.precision, optimization=options.optimization, strict=options.strict,
                      throughput=options.max_batch > 1)
        served = cls(spec, model, options)
        log.info("%s: %s, %s on %s %s", spec.name, spec.path, model.kind, model.engine, model.precision)
        return served

    @property
    def input_name(self) -> str:
        return self.model.input_name

    @property
    def output_name(self) -> str:
        return self.model.output_name

    def outputs(self) -> list[tuple[str, str, list[int]]]:
        """``(name, datatype, shape)`` of each output this server gives: the model's, and class ids."""
        listed = [(self.output_name, datatype_of(self.output_dtype), [-1, *self.output_shape])]
        if self.segmentation:
            listed.append((CLASS_IDS, datatype_of(postprocess.mask_dtype(self.contract)), [-1, *self.ids_shape]))
        return listed

    def class_ids(self, outputs: np.ndarray) -> np.ndarray:
        """(N, ...) raw outputs -> (N, H, W) class ids at the model's output size."""
        return np.stack([postprocess.class_ids(self.model.channels_last(o), self.contract) for o in outputs])

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata, plus ``edgeseg``: the contract (preprocessing, classes, palette) and engine."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "edgeseg_onnx",
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.input_shape]}],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in self.outputs()],
            "edgeseg": {"contract": self.contract.to_dict(), "engine": self.model.engine,
                        "precision": self.model.precision, "providers": list(self.model.providers),
                        "max_batch": self.options.max_batch,
                        "segment": f"/v1/models/{self.name}/segment" if self.segmentation else None},
        }

    def config(self) -> dict[str, Any]:
        """Triton's model configuration, as far as it applies (``tritonclient``'s ``get_model_config``)."""
        def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
            return {"name": name, "data_type": f"TYPE_{datatype}", "dims": shape[1:]}

        return {
            "name": self.name, "platform": "edgeseg_onnx", "backend": self.model.engine,
            "max_batch_size": self.options.max_batch,
            "input": [tensor(self.input_name, "FP32", [-1, *self.input_shape])],
            "output": [tensor(*o) for o in self.outputs()],
            "dynamic_batching": {"max_queue_delay_microseconds": int(self.options.max_delay_ms * 1000)},
        }
