"""A model: an ONNX file, its contract, one onnxruntime session, pre- and post-processing.

Three ways to use it::

    model = Model("fcn8.onnx")
    result = model(cv2.imread("street.png"))          # one frame
    results = model.predict_batch([img1, img2])        # a batch
    for frame, result in model.iterate(open_source("clip.mp4")): ...

The object holds no mutable state after construction (onnxruntime's ``run`` is thread-safe),
so threads may share one, and each worker process can build its own cheaply.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from edgeseg.runtime.contract import METADATA_KEY, Contract
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime._engines import EngineConfig, check_engine
from edgeseg.runtime._frames import Frame
from edgeseg.runtime._sources import open_source
from edgeseg.runtime._modelfile import ModelFile
from edgeseg.runtime import postprocess as post
from edgeseg.runtime._preprocess import Geometry, preprocess_batch
from edgeseg.runtime.postprocess import Result, SegmentationResult
from edgeseg.runtime._session import CUDA, make_session
from edgeseg.runtime._tuning import choose_config

log = logging.getLogger("edgeseg.runtime")

# The kinds whose frames the runtime can turn into results; an encoder or decoder half runs raw (Model.run).
FRAME_KINDS = ("segmentation", "autoencoder")


class Model:
    """An ONNX model read through its contract.

    ``contract``: a :class:`Contract` or a dict of overrides (merged key by key into the file's
    contract, or the whole contract for a file that has none). ``engine``: ``onnxruntime``, ``openvino``
    (the optional OpenVINO engine, :mod:`edgeseg.runtime._openvino`) or ``auto`` (the default): the
    configuration ``edgeseg tune`` measured fastest for this file on this machine at the agreement ``bar``
    (``exact`` >= 99.9%, ``fast`` >= 99%; records under ``tuning_cache``, default the XDG cache), else the
    heuristic of :func:`edgeseg.runtime.heuristic_config` (OpenVINO bf16 on CPUs with bf16 and OpenVINO
    installed, else onnxruntime); with ``engine`` left unset, naming an onnxruntime knob (``provider``,
    ``optimization``, ``strict``) means onnxruntime; named ``threads``/``throughput``/``precision`` are
    kept. One log line says which and why, and ``config`` holds it (its ``batch`` is the batch to feed). Measured (README, "Results on
    this machine"): OpenVINO bf16 ran FCN-8 4.9x onnxruntime FP32 on the AMX machine at 99.97% agreement;
    on an AVX2-only CPU the heuristic keeps onnxruntime, the faster there.
    ``provider`` and ``optimization`` are onnxruntime's (see :func:`make_session`); ``precision`` is
    OpenVINO's: ``auto`` (its default, bf16 where the CPU has it) or ``f32``, or ``fp16``: onnxruntime on the
    GPU (CUDA, or TensorRT with ``provider="tensorrt"``), refused in one line where there is none; so is ``throughput``
    (several streams, each batch split across them: for batched files, not live sources). ``threads`` goes to
    either engine (None: each engine's measured default). ``engine`` and ``precision`` say what
    really runs (``precision`` is ``fp32`` for onnxruntime). ``file`` is the :class:`ModelFile` that runs (under
    ``auto``, maybe the tuning record's INT8 or fused file): ``model.file.quantized``, ``model.file.sha256``.

    Example::

        model = Model("fcn8.onnx", provider="cpu")
        mask = model(cv2.imread("street.png")).mask
        fast = Model("fcn8.onnx", engine="openvino")   # fast.precision == "bf16" on AMX CPUs
    """

    def __init__(self, path: str | os.PathLike, *, provider: str = "auto", threads: int | None = None,
                 optimization: str = "all", contract: Contract | Mapping[str, Any] | None = None,
                 engine: str | None = None, precision: str = "auto", throughput: bool = False,
                 bar: str = "exact", tuning_cache: str | os.PathLike | None = None, strict: bool = False) -> None:
        # None: "auto" as the default; its choice is logged at debug level (it is in the summary), an asked-for
        # "auto" at info level.
        named, engine = engine is not None, check_engine(engine or "auto")
        # What __reduce__ rebuilds from: the arguments as given (the engine normalized).
        self._arguments = str(path), {
            "provider": provider, "threads": threads, "optimization": optimization, "contract": contract,
            "engine": engine, "precision": precision, "throughput": throughput, "bar": bar,
            "tuning_cache": tuning_cache, "strict": strict}
        if precision == "fp16":  # the GPU's half precision: onnxruntime's CUDA or TensorRT provider, never the CPU
            _check_fp16(engine=engine, provider=provider)
            named, engine, provider = True, "onnxruntime", "cuda" if provider == "auto" else provider
        # The one read of the file (head, metadata, graph names): every check below and the engines use it.
        self.file = ModelFile.read(path)
        self.config = EngineConfig(engine=engine, precision=precision, threads=threads, throughput=throughput)
        self.choice_reason = f"engine={engine!r} asked for"
        if engine == "auto":
            provider = self._choose_engine(provider=provider, optimization=optimization, strict=strict, bar=bar,
                                           tuning_cache=tuning_cache, named=named)
            engine, precision = self.config.engine, self.config.precision
            threads, throughput = self.config.threads, self.config.throughput
            precision = "auto" if engine == "onnxruntime" and precision == "f32" else precision
        self.path = self.file.path
        self.engine = engine
        # The contract before the engine: a missing or malformed one is refused before seconds of compiling.
        self.contract = _resolve_contract(self.file, contract)
        self.kind = self.contract.kind
        self.session: Any = None
        self._openvino: Any = None
        if self.engine == "openvino":
            inputs, outputs = self._open_openvino(precision=precision, threads=threads, throughput=throughput,
                                                  named=named)
        else:
            inputs, outputs = self._open_onnxruntime(provider=provider, precision=precision, threads=threads,
                                                     optimization=optimization, strict=strict)
        self._bind_ports(inputs, outputs)
        self._uses_cuda = CUDA in self.providers
        # Class ids fit uint8 up to 256 classes; BGR palette as an OpenCV LUT for overlays.
        self.mask_dtype = post.mask_dtype(self.contract)

    def _choose_engine(self, *, provider: str, optimization: str, strict: bool, bar: str,
                       tuning_cache: str | os.PathLike | None, named: bool) -> str:
        """engine auto: the tuning record's or the heuristic's configuration, with what the caller named kept.

        Sets ``config``, ``choice_reason`` and maybe ``file`` (a record's INT8 or fused file); returns the provider.
        """
        requested = self.config
        self.config, self.choice_reason, other = _auto_config(
            self.file, provider=provider, optimization=optimization, strict=strict, bar=bar, cache=tuning_cache,
            default=not named)
        if other:  # the tuning record's INT8 or fused file
            self.file = ModelFile.read(other)
        # What the caller named explicitly wins over the record's or the heuristic's choice.
        self.config = dataclasses.replace(
            self.config, threads=requested.threads if requested.threads is not None else self.config.threads,
            throughput=requested.throughput or self.config.throughput,
            precision=(requested.precision if requested.precision != "auto" and self.config.engine == "openvino"
                       else self.config.precision))
        log.log(logging.INFO if named else logging.DEBUG, "%s: engine auto runs %s (%s)", self.file.path.name,
                self.config.describe(), self.choice_reason)
        return "cuda" if self.config.precision == "fp16" and provider == "auto" else provider  # a record's GPU fp16

    def _open_openvino(self, *, precision: str, threads: int | None, throughput: bool,
                       named: bool) -> tuple[list, list]:
        from edgeseg.runtime._openvino import OpenVinoEngine

        self._openvino = OpenVinoEngine(self.file, precision=precision, threads=threads, throughput=throughput)
        if named:  # the default engine's choice is in the summary; an asked-for engine says what it compiled
            log.info("%s: engine openvino, precision %s, %d stream(s)", self.path.name, self._openvino.precision,
                     self._openvino.streams)
        self.providers: tuple[str, ...] = ("OpenVINO:CPU",)
        self.precision = self._openvino.precision
        self.streams = self._openvino.streams
        return self._openvino.inputs, self._openvino.outputs

    def _open_onnxruntime(self, *, provider: str, precision: str, threads: int | None, optimization: str,
                          strict: bool) -> tuple[list, list]:
        if precision not in ("auto", "fp16"):
            raise EdgesegError(f"precision={precision!r} is OpenVINO's knob; onnxruntime runs this model in "
                               "fp32, or fp16 on a GPU (use engine='openvino', precision 'fp16', or leave it at "
                               "'auto').")
        self.session = make_session(self.file, provider=provider, threads=threads, optimization=optimization,
                                    strict=strict, fp16=precision == "fp16")
        self.providers = tuple(self.session.get_providers())
        self.precision = "fp16" if precision == "fp16" else "fp32"
        self.streams = 1
        return _ports(self.session.get_inputs(), self.path), _ports(self.session.get_outputs(), self.path)

    def _bind_ports(self, inputs: list[tuple[str, Any]], outputs: list[tuple[str, Any]]) -> None:
        """The input and output this model feeds and reads, checked against the contract, and the fixed batch."""
        names = [name for name, _ in inputs]
        self.input_name = self.contract.input.name if self.contract.input.name in names else names[0]
        self._input_index = names.index(self.input_name)
        self.output_name = outputs[0][0]
        if self.kind in FRAME_KINDS:  # an encoder/decoder half may take vectors
            self._check_input_shape(dict(inputs)[self.input_name])
            self._check_output_shape(*outputs[0])
        # A fixed-batch export (`export --batch N`) takes exactly N frames: `run` pads a short batch and drops
        # the padding, and the batch to feed (config.batch, which segment uses) becomes N.
        first = list(dict(inputs)[self.input_name])[:1]
        self.fixed_batch = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
        if self.fixed_batch and self.fixed_batch > 1 and self.config.batch == 1:
            self.config = dataclasses.replace(self.config, batch=self.fixed_batch)

    def check_frames(self) -> None:
        """Raise EdgesegError unless this model turns frames into results (a segmentation model or a whole
        autoencoder): what a pipeline calls at load, so an encoder half is refused before its first frame.

        Example::

            Model("encoder.onnx").check_frames()   # EdgesegError: ... an 'encoder' model ...
        """
        if self.kind not in FRAME_KINDS:
            raise EdgesegError(
                f"model `{self.path}` is an {self.kind!r} model; frames go through segmentation and autoencoder "
                "models. Run the whole autoencoder, or use Model.run for raw outputs."
            )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as its constructor arguments: a worker process (multiprocessing, Ray) rebuilds
        # its own session instead of receiving one (sessions cannot be pickled).
        return _rebuild, self._arguments

    def __repr__(self) -> str:
        return (f"Model({str(self.path)!r}, kind={self.kind!r}, engine={self.engine!r}, "
                f"providers={list(self.providers)}, precision={self.precision!r})")

    def __call__(self, image: np.ndarray, *, probabilities: bool = False) -> Result:
        """Run one frame (BGR, BGRA, gray, 8 or 16 bit, any size)."""
        return self.predict_batch([image], probabilities=probabilities)[0]

    def predict_batch(self, images: Sequence[np.ndarray], *, probabilities: bool = False) -> list[Result]:
        """Run several frames (of any sizes) as one batch; results in the same order."""
        if len(images) == 0:
            return []
        batch, geometries = preprocess_batch(images, self.contract.input)
        outputs = self.run(batch)
        return [self.postprocess(outputs[i], geometries[i], batch[i], probabilities=probabilities)
                for i in range(len(images))]

    def iterate(self, source: Iterable[Frame] | str | os.PathLike, *, probabilities: bool = False
                ) -> Iterator[tuple[Frame, Result | None]]:
        """``(frame, result)`` for each frame of a source (frames, or a path for :func:`open_source`).

        A bad item gives ``(frame, None)`` with ``frame.error`` saying why.
        """
        frames = open_source(source) if isinstance(source, (str, os.PathLike)) else source
        for frame in frames:
            if not frame.ok:
                yield frame, None
                continue
            try:
                yield frame, self(frame.image, probabilities=probabilities)
            except BadInputError as error:
                yield dataclasses.replace(frame, error=str(error)), None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw preprocessed float32 batch in, raw first output out (for benchmarks and calibration).

        A model whose output does not hold one result per input frame raises EdgesegError.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed = self.fixed_batch
        if fixed is not None and len(batch) != fixed:
            output = np.concatenate([self._run_padded(batch[start:start + fixed], fixed)
                                     for start in range(0, len(batch), fixed)])
        else:
            output = self._run(batch)
        if np.ndim(output) == 0 or output.shape[0] != batch.shape[0]:
            got = "a scalar" if np.ndim(output) == 0 else f"{output.shape[0]} (shape {list(output.shape)})"
            raise EdgesegError(f"model `{self.path}` returned {got} result(s) for a batch of {batch.shape[0]} frames: "
                               "its output's first axis must be the batch. Fix the model, or run with --batch 1.")
        return output

    def _run_padded(self, part: np.ndarray, size: int) -> np.ndarray:
        # The last frame repeated (values the model has seen, unlike zeros); its results are dropped.
        count = len(part)
        if count < size:
            part = np.concatenate([part, np.repeat(part[-1:], size - count, axis=0)])
        return self._run(part)[:count]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._openvino is not None:
            return self._openvino.run(batch, self._input_index)
        if self._uses_cuda:
            # IO binding: the output stays on the device until one copy back, with no staging buffers.
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def warmup(self, batch: int = 1) -> None:
        """Run one batch of zeros, so first-call costs (OpenVINO compiles its kernels for each new input
        shape: 180 ms against 65 for FCN-8 batch 4) are paid before the frames that count.

        Example::

            model.warmup(4)   # before timing a batch-4 run
        """
        spec = self.contract.input
        shape = ((batch, spec.height, spec.width, spec.channels) if spec.layout == "NHWC"
                 else (batch, spec.channels, spec.height, spec.width))
        self.run(np.zeros(shape, np.float32))

    # -- post-processing: edgeseg.runtime.postprocess, bound to this model's contract ---------

    def channels_last(self, output: np.ndarray) -> np.ndarray:
        """One output item as (H, W, C) whatever the model's layout."""
        return self._named(post.channels_last, output, self.contract)

    def postprocess(self, output: np.ndarray, geometry: Geometry, model_input: np.ndarray | None = None, *,
                    probabilities: bool = False) -> Result:
        """One item of :meth:`run`'s output -> a result at the frame's own size.

        ``model_input`` (the preprocessed item) is needed for autoencoders' error maps.
        """
        self.check_frames()
        output = self.channels_last(output)
        if self.kind == "autoencoder":
            if model_input is None:
                raise EdgesegError("autoencoder post-processing needs the preprocessed input.")
            return self._named(post.reconstruction, output, self.channels_last(model_input), geometry,
                               self.contract.input)
        return self.segmentation(output, geometry, probabilities=probabilities)

    def segmentation(self, scores: np.ndarray, geometry: Geometry, *, probabilities: bool = False,
                     activated: bool = False) -> SegmentationResult:
        """(H, W, C) model-size scores -> class-id mask at the frame's size (argmax before resizing).

        ``activated``: the scores are already probabilities (e.g. temporally smoothed ones).
        """
        self.check_frames()
        return self._named(post.segmentation, scores, geometry, self.contract, with_probabilities=probabilities,
                           activated=activated)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Model-size scores as probabilities (applies softmax/sigmoid where the model has none)."""
        return post.probabilities(scores, self.contract)

    def _named(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        # A contract/output mismatch is the model's fault: say which model.
        try:
            return function(*args, **kwargs)
        except EdgesegError as error:
            raise EdgesegError(f"model `{self.path}`: {error}") from None

    def _check_input_shape(self, shape: Sequence[Any]) -> None:
        spec = self.contract.input
        expected = ((spec.height, spec.width, spec.channels) if spec.layout == "NHWC"
                    else (spec.channels, spec.height, spec.width))
        if len(shape) != 4:
            raise EdgesegError(f"model `{self.path}`: input `{self.input_name}` has rank {len(shape)}; "
                               "the runtime feeds (N, H, W, C) or (N, C, H, W) images.")
        for got, want in zip(shape[1:], expected):
            if isinstance(got, int) and got != want:
                raise EdgesegError(
                    f"model `{self.path}`: input `{self.input_name}` has shape {list(shape)}, but the contract "
                    f"says {spec.layout} {spec.height}x{spec.width}x{spec.channels}. Fix the contract "
                    "(input.layout/height/width/channels)."
                )

    def _check_output_shape(self, name: str, shape: Sequence[Any]) -> None:
        # Found at load, not at the first frame: a run that fails there has already claimed its --out.
        contract = self.contract
        if contract.kind != "segmentation" or contract.output.fused == "class_ids" or len(shape) != 4:
            return
        classes = contract.num_classes

        def fits(channels: Any) -> bool:
            return not isinstance(channels, int) or channels == classes or (channels == 1 and classes == 2)

        # postprocess.channels_last takes the class axis from the layout, or whichever axis fits: refuse only
        # when neither can hold the contract's classes.
        if not fits(shape[-1]) and not fits(shape[1]):
            got = shape[-1] if contract.input.layout == "NHWC" else shape[1]
            raise EdgesegError(
                f"model `{self.path}`: its output `{name}` has {got} channels (shape {list(shape)}), but the contract "
                f"names {classes} classes ({', '.join(contract.output.classes)}). Fix the contract's output.classes "
                "(re-export with --classes), or pass the model this contract was written for.")


def _rebuild(path: str, arguments: Mapping[str, Any]) -> Model:
    return Model(path, **arguments)


def _check_fp16(*, engine: str, provider: str) -> None:
    if engine == "openvino" or provider == "cpu":
        raise EdgesegError(f"precision 'fp16' is the GPU path (onnxruntime CUDA or TensorRT), not engine "
                           f"{engine!r} with provider {provider!r}; on the CPU use precision 'bf16' (OpenVINO) "
                           "or the default.")


def _ports(ports: Sequence[Any], path: os.PathLike) -> list[tuple[str, list[Any]]]:
    # (name, shape) of onnxruntime's inputs or outputs; ModelFile.read refused names that are not UTF-8, which
    # the binding cannot decode (a UnicodeDecodeError, not an error naming the model).
    try:
        return [(port.name, port.shape) for port in ports]
    except UnicodeDecodeError as error:
        raise EdgesegError(f"Cannot read model `{path}`: a tensor name is not UTF-8 text ({error}). Re-export the "
                           "model with UTF-8 names.") from None


def _auto_config(file: ModelFile, *, provider: str, optimization: str, strict: bool, bar: str,
                 cache: str | os.PathLike | None, default: bool) -> tuple[EngineConfig, str, str | None]:
    # At the default engine, a named onnxruntime knob (its execution provider, graph optimization level, strict
    # GPU placement) is a choice of onnxruntime, not traded for another engine; engine="auto" asked for
    # explicitly goes by the measurement alone (provider="cpu" then only says "no GPU").
    named = [f"{k}={v!r}" for k, v, usual in (("provider", provider, "auto"), ("optimization", optimization, "all"),
                                              ("strict", strict, False)) if v != usual]
    if named and default:
        return EngineConfig(), f"{', '.join(named)} asked for: onnxruntime's knob(s)", None
    try:
        kind = file.contract.kind if file.contract is not None else None
    except EdgesegError:  # a broken contract: the contract reader says so below, as always
        kind = None
    return choose_config(file, bar=bar, cache=cache, provider=provider, kind=kind)


def _resolve_contract(file: ModelFile, given: Contract | Mapping[str, Any] | None) -> Contract:
    if isinstance(given, Contract):
        return given
    origin = f"model `{file.path}`"
    stored = file.contract
    if given is None:
        if stored is None:
            raise EdgesegError(
                f"{origin} carries no edgeseg contract (metadata key `{METADATA_KEY}`): it lacks `kind` and "
                "`input`. Export it with `edgeseg export`, or pass the facts (--kind, --input-size, --classes)."
            )
        return stored
    base = stored.to_dict() if stored is not None else {}
    merged = _merge(base, given)
    if stored is None and isinstance(merged.get("input"), Mapping) and "channels" not in merged["input"]:
        # Without a stored contract, the colour order fixes the channel count (RGB unless told).
        merged["input"] = {**merged["input"], "channels": 1 if merged["input"].get("color") == "GRAY" else 3}
    return Contract.from_dict(merged, origin=origin)


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
