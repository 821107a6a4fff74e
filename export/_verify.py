"""Layer-by-layer parity between a Keras model and its ONNX export.

:func:`verify_models` is its stages, each a function with a typed result:

1. **reference**: Keras as TensorFlow can compute it here (a dilated Conv2DTranspose through the
   dilation-1 rewrite the export uses, where TensorFlow's CPU kernel refuses it) and the bar
   (:mod:`edgeseg.export._tolerance`): relative to each layer's peak at the precision the model
   computes in where the engine runs the file as written (fp32), SQNR where it lowers the
   precision (bf16, fp16, int8);
2. **trace**: the first input run call by call (:mod:`edgeseg.export._trace`): every layer call,
   nested, shared or around ``keras.ops`` calls, with its output and position;
3. **match**: each call's ONNX tensor, found for sure by name, shape and position, or listed as
   not compared with the reason (:mod:`edgeseg.export._match`);
4. **compare**: every input through both sides; the ONNX side's values come from one function,
   :func:`edgeseg.export._tensors.onnx_tensors`, read from the engine that deploys the file
   (:mod:`edgeseg.runtime.probe`: onnxruntime, OpenVINO or TensorRT, at its precision);
5. **settle**: under the relative rule, a layer near the bar is recomputed in float64, and the
   verdict is the file's error against that, with which side was closer;
6. **report**: counts of compared / not compared / output-only, the bar, the reference, the
   engine that ran, the first divergence in graph order and the layers ranked worst first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.export._tolerance import NEAR, Bar, Errors, badness, bar_for, judge
from edgeseg.runtime import preprocess, read_image
from edgeseg.runtime.contract import Contract, InputSpec
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.postprocess import class_ids
from edgeseg.runtime.probe import resolve_target

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
_NCHW_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization"})
LAYER_CHOICES = ("all", "transposed")


@dataclass(frozen=True)
class LayerCheck:
    """One compared layer call (DESIGN.md's report fields, plus how it was found and what it was judged against).

    ``max_abs_err``/``max_rel_err``/``sqnr_db`` are the file (as the engine computed it) against
    Keras; ``ok`` is judged against ``reference``: Keras, or float64 where Keras and the file
    differed near a relative bar (then ``float64`` holds both sides' relative errors against it
    and which was closer).
    """

    name: str
    type: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    ok: bool
    found: str = "name"
    reference: str = "keras"
    float64: dict[str, Any] | None = None
    sqnr_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {**dataclasses.asdict(self), "shape": list(self.shape)}
        if self.float64 is None:
            del data["float64"]
        return data


@dataclass(frozen=True)
class VerifyReport:
    """The whole comparison; ``to_dict`` is the report JSON, ``table`` the terminal view."""

    ok: bool
    first_failure: str | None
    bar: Bar
    inputs: dict[str, Any]
    layers: tuple[LayerCheck, ...]
    output: dict[str, Any]
    not_compared: tuple[dict[str, str], ...] = ()  # {"name", "type", "reason"} per layer call verify could not check
    layers_total: int = 0
    operations: int = 0  # keras.ops calls between layers (not layers: counted, not compared)
    reference: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # what ran: engine, device, precision, detail, why (probe.Ran)
    ranked: tuple[dict[str, Any], ...] = ()  # compared layers, worst first: {"name", "sqnr_db", "max_rel_err", "ok"}
    instrumentation: dict[str, Any] = field(default_factory=dict)  # probed vs deployed compile (probe.Instrumentation)

    @property
    def tolerance(self) -> float | None:
        return self.bar.tolerance

    @property
    def compared(self) -> int:
        return len(self.layers)

    @property
    def output_only(self) -> bool:
        """Nothing could be compared layer by layer: only the final output was."""
        return not self.layers

    def verdict(self) -> str:
        counts = f"{self.compared} of {self.layers_total} layers compared, {len(self.not_compared)} not compared"
        if self.operations:
            counts += f" ({self.operations} keras.ops call(s) between layers are not layers)"
        if self.first_failure is not None:
            return f"FIRST FAILURE: {self.first_failure}; {counts}"
        if self.output_only and not self.layers_total:
            return "OUTPUT ONLY: no layer call of the kind asked for; the final output is within tolerance"
        if self.output_only:
            return (f"OUTPUT ONLY: nothing could be compared layer by layer ({self.layers_total} layers, none found for "
                    "sure in the ONNX file); the final output is within tolerance")
        return f"{counts}; all compared layers within tolerance"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "first_failure": self.first_failure,
            "tolerance": self.tolerance,
            "inputs": dict(self.inputs),
            "layers": [check.to_dict() for check in self.layers],
            "output": dict(self.output),
            "not_compared": [dict(item) for item in self.not_compared],
            "compared": self.compared,
            "layers_total": self.layers_total,
            "operations": self.operations,
            "output_only": self.output_only,
            "precision": self.bar.precision,
            "bar": self.bar.to_dict(),
            "reference": dict(self.reference),
            "verdict": self.verdict(),
            "engine": dict(self.engine),
            "ranked": [dict(item) for item in self.ranked],
            "instrumentation": dict(self.instrumentation),
        }

    def summary(self) -> dict[str, Any]:
        """The contract's ``verified`` section."""
        errors = [c.max_abs_err for c in self.layers] + [self.output.get("max_abs_err", 0.0)]
        return {"max_abs_err": float(max(errors)), "layers_checked": self.compared, "layers_total": self.layers_total,
                "ok": self.ok, "output_only": self.output_only, "precision": self.bar.precision}

    def table(self) -> str:
        names = [c.name for c in self.layers] + [item["name"] for item in self.not_compared]
        width = max([len("layer")] + [len(n) for n in names])
        rows = [f"{'layer':<{width}}  {'type':<18} {'shape':<14} {'max_abs_err':>11} {'max_rel_err':>11} {'sqnr_db':>7}  ok"]
        for c in self.layers:
            shape = "x".join(str(d) for d in c.shape)
            mark = "ok" if c.ok else "FAIL"
            if c.float64 is not None:
                mark += f" (float64: file {c.float64['file_rel_err']:.2g}, Keras {c.float64['keras_rel_err']:.2g})"
            sqnr = c.sqnr_db if c.sqnr_db is not None else float("nan")
            rows.append(f"{c.name:<{width}}  {c.type:<18} {shape:<14} {c.max_abs_err:>11.3g} {c.max_rel_err:>11.3g} "
                        f"{sqnr:>7.1f}  {mark}")
        for item in self.not_compared:
            rows.append(f"{item['name']:<{width}}  {item['type']:<18} not compared: {item['reason']}")
        out = f"output: max_abs_err {self.output['max_abs_err']:.3g}, max_rel_err {self.output['max_rel_err']:.3g}"
        if self.output.get("argmax_agreement") is not None:
            out += f", argmax agreement {self.output['argmax_agreement']:.6f}"
        inputs = f"inputs: {self.inputs['count']} {self.inputs['kind']}"
        if self.inputs.get("skipped"):
            inputs += f" ({self.inputs['skipped']} unreadable, skipped)"
        reference = f"reference: {self.reference.get('keras', 'Keras')}"
        if self.reference.get("float64"):
            reference += f"; float64 for {len(self.reference['float64'])} layer(s) near the bar"
        if self.reference.get("note"):
            reference += f"; {self.reference['note']}"
        lines = [*rows, out, f"{inputs}; bar {self.bar.describe()}; {reference}"]
        if self.engine:
            lines.append(f"engine: {self.engine['engine']} on {self.engine['device']}, {self.engine['precision']} "
                         f"({self.engine['detail']})")
        if self.instrumentation and not self.instrumentation.get("same_as_deployed", True):
            lines.append(f"note: with the layers read out the engine computed the output differently (max-abs "
                         f"{self.instrumentation['max_abs_diff']:.3g}); the output above is the deployed one's")
        return "\n".join([*lines, f"verdict: {self.verdict()}"])


@dataclass(frozen=True)
class VerifyRequest:
    """What verify compares on and which layers it reports (``edgeseg verify``, ``edgeseg export --verify``).

    ``images``: a folder of images, fed through the contract (None: ``random`` seeded random inputs, from
    ``seed``). ``layers``: ``all`` or ``transposed`` (Conv2DTranspose only). ``tolerance`` (fp32) and ``sqnr``
    (dB per lowered precision): the bar, None for the defaults of :func:`edgeseg.export._tolerance.bar_for`.

    Example::

        VerifyRequest(images="frames/", layers="transposed")
    """

    images: str | os.PathLike | None = None
    random: int = 4
    tolerance: float | None = None
    seed: int = 0
    layers: str = "all"
    sqnr: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.layers not in LAYER_CHOICES:
            raise EdgesegError(f"--layers must be `all` or `transposed`, got {self.layers!r}.")


def verify_files(
    keras_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    request: VerifyRequest = VerifyRequest(),
    engine: str = "onnxruntime",
    precision: str = "fp32",
    custom_objects: str | None = None,
    unsafe: bool = False,
) -> VerifyReport:
    """Compare ``keras_path`` with its export ``onnx_path`` layer by layer.

    ``request``: the inputs, the layers reported and the bar (:class:`VerifyRequest`).
    ``engine``/``precision``: where the ONNX side runs (:mod:`edgeseg.runtime.probe`); ``auto`` is what
    ``--engine auto`` runs the file with. The bar (:func:`edgeseg.export._tolerance.bar_for`): at fp32,
    ``request.tolerance`` relative to each layer's peak (None: the default of the precision the model
    computes in); at bf16/fp16/int8, ``request.sqnr`` dB per precision (None: the defaults).
    ``custom_objects`` and ``unsafe`` load the Keras file as ``edgeseg export`` did.

    Example::

        report = verify_files("model.keras", "model.onnx", request=VerifyRequest(images="frames/"))
        print(report.table()); assert report.ok, report.first_failure
        report = verify_files("model.keras", "model.int8.onnx", engine="openvino", precision="int8")
    """
    from edgeseg.export._keras_file import load_model
    from edgeseg.runtime.files import sha256_of

    proto = load_onnx(onnx_path)
    contract = Contract.from_onnx(proto, origin=str(onnx_path))
    if contract is None:
        raise EdgesegError(
            f"Cannot verify `{onnx_path}`: it carries no edgeseg contract. Export it with `edgeseg export` first."
        )
    model, _ = load_model(keras_path, custom_objects=custom_objects, unsafe=unsafe)
    recorded = contract.source.get("keras_sha256")
    if recorded and Path(keras_path).is_file() and recorded != sha256_of(keras_path):
        log.warning("`%s` was exported from a different Keras file (sha256 %s...); comparing anyway.", onnx_path, recorded[:12])
    target = resolve_target(onnx_path, engine=engine, precision=precision)
    return verify_models(model, proto, contract, request=request, engine=target.engine, precision=target.precision,
                         onnx_path=onnx_path, why=target.why)


def verify_models(
    model: Any,
    proto: Any,
    contract: Contract,
    *,
    request: VerifyRequest = VerifyRequest(),
    engine: str = "onnxruntime",
    precision: str = "fp32",
    onnx_path: str | os.PathLike | None = None,
    why: str = "asked for",
) -> VerifyReport:
    """Compare Keras ``model`` with ONNX ``proto`` (its export, carrying ``contract``).

    Inputs are the images in ``request.images`` (through ``contract``'s preprocessing; unreadable
    ones are skipped and counted) or ``request.random`` seeded random ones. Raises ``EdgesegError`` when the
    ONNX file does not come from ``model`` (another input or output shape); a file in which no
    layer can be found for sure is compared by its output only (``report.output_only``).
    ``request``, ``engine`` and ``precision`` as :func:`verify_files` (no ``auto`` here);
    ``onnx_path``: ``proto``'s file, read by engines that take files (OpenVINO, TensorRT), and
    ``why``: how the engine was chosen, for the report.

    Example::

        report = verify_models(model, onnx.load("m.onnx"), contract, request=VerifyRequest(random=2))
        print(report.table())
    """
    runs_on = _Engine(engine=engine, precision=precision, path=onnx_path, why=why)
    reference = _reference(model, contract, precision=precision, tolerance=request.tolerance, sqnr=request.sqnr)
    _check_same_model(model, contract)
    inputs = _inputs(model, contract, images=request.images, random=request.random, seed=request.seed)
    traced = _trace(reference, inputs, layers=request.layers, heads=list(contract.source.get("keras_outputs") or [0]))
    sides = _match(traced, proto, contract, runs_on=runs_on)
    tally = _compare_all(inputs, reference=reference, traced=traced, sides=sides, contract=contract)
    settled = _settle(reference, inputs, traced=traced, sides=sides, tally=tally)
    return _report(reference, inputs, traced=traced, sides=sides, tally=tally, settled=settled)


# -- 1. reference --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reference:
    """What the file is compared with: Keras as it computes here, and the bar of its precision."""

    original: Any
    keras: Any  # the model Keras runs (the original, or its dilation-1 rewrite)
    rewritten: tuple[str, ...]  # layers computed through the rewrite
    bar: Bar
    precision_why: str
    size: tuple[int, int] | None


def _reference(model: Any, contract: Contract, *, precision: str, tolerance: float | None,
               sqnr: dict[str, float] | None) -> _Reference:
    """Keras as it computes here, and the bar: ``precision`` is the engine's, the model's own comes from its policy."""
    from edgeseg.export._cuda_friendly import reference_model
    from edgeseg.export._trace import compute_dtype

    dtype = compute_dtype(model)
    computes = {"float16": "fp16", "bfloat16": "bf16"}.get(dtype, "fp32")
    bar = bar_for(precision, model=computes, tolerance=tolerance, sqnr=sqnr)
    if tolerance is not None and not bar.relative:  # said once, never silently dropped
        log.warning("--tolerance applies where the engine computes the file as written (fp32); %s is judged by SQNR "
                    "(--sqnr-%s).", bar.precision, bar.precision)
    why = f"the model computes in {dtype}"
    if not bar.relative:
        why += f"; the engine computes in {bar.precision}: judged by SQNR"
    elif computes != "fp32":
        why += " (mixed precision): judged at its precision"
    size = (contract.input.height, contract.input.width) if contract.kind != "decoder" else None
    keras_model, rewritten = reference_model(model, size=size)
    if rewritten:
        log.warning("TensorFlow on this CPU cannot compute a dilated Conv2DTranspose; verify computes %s through the "
                    "dilation-1 rewrite the export uses.", ", ".join(f"`{n}`" for n in rewritten))
    return _Reference(original=model, keras=keras_model, rewritten=rewritten, bar=bar, precision_why=why, size=size)


def _check_same_model(model: Any, contract: Contract) -> None:
    """One clear error when the ONNX file's input cannot be ``model``'s."""
    if contract.kind == "decoder":
        return
    keras_shape = tuple(model.inputs[0].shape[1:])
    expected = (contract.input.height, contract.input.width, contract.input.channels)
    if len(keras_shape) == 3 and any(k is not None and k != e for k, e in zip(keras_shape, expected)):
        raise EdgesegError(
            f"The ONNX file does not come from this Keras model: the model takes {(None, *keras_shape)} but the file's "
            f"contract says {contract.input.height}x{contract.input.width}x{contract.input.channels}."
        )


# -- 2. trace ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Traced:
    """The first input run call by call, and which calls the report is about."""

    trace: Any  # edgeseg.export._trace.Trace
    first: dict[int, np.ndarray]  # every call's output on the first input
    first_outputs: list[np.ndarray]
    wanted: list[int]  # the layer calls to compare, in graph order
    types: dict[int, str]  # report type per wanted call (the original layer's class)
    operations: int


def _trace(reference: _Reference, inputs: _Inputs, *, layers: str, heads: list[int]) -> _Traced:
    from edgeseg.export._graph import leaf_layers
    from edgeseg.export._trace import INPUT, trace_model

    trace, first, outputs = trace_model(reference.keras, inputs.batches[0])
    original = {layer.name: type(layer).__name__ for _, layer in leaf_layers(reference.original)}
    # Only what the exported outputs are computed from is in the file (one head of several, say).
    exported = set()
    for k in heads:
        if 0 <= k < len(trace.outputs) and trace.outputs[k] != INPUT:
            exported |= {trace.outputs[k], *trace.ancestors(trace.outputs[k])}
    wanted, types = [], {}
    for call in trace.calls:
        if not call.layer or call.layer_name not in original or call.index not in exported:
            continue  # a keras.ops call, a layer the dilation-1 rewrite added, or one of a head not exported
        kind = original[call.layer_name]
        if layers == "transposed" and kind != "Conv2DTranspose":
            continue
        wanted.append(call.index)
        types[call.index] = kind
    operations = sum(1 for call in trace.calls if not call.layer and call.index in exported)
    return _Traced(trace=trace, first=first, first_outputs=outputs, wanted=wanted, types=types, operations=operations)


# -- 3. match ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Engine:
    """Where the ONNX side runs: engine and precision (resolved), the file engines read, and why these."""

    engine: str
    precision: str
    path: str | os.PathLike | None
    why: str

    def tensors(self, proto: Any, names: Sequence[str], feeds: Iterator[np.ndarray]) -> Any:
        """:func:`edgeseg.export._tensors.onnx_tensors` on this engine: the file where there is one, else ``proto``."""
        from edgeseg.export._tensors import onnx_tensors

        model = self.path if self.path is not None else proto
        return onnx_tensors(model, names, feeds, engine=self.engine, precision=self.precision, proto=proto)


@dataclass(frozen=True)
class _Sides:
    """Each wanted call's ONNX tensor (or why none), the graph's outputs, how to feed the graph and where it runs."""

    proto: Any
    tensors: dict[int, str]  # call -> ONNX tensor, for calls found
    how: dict[int, str]
    reasons: dict[int, str]  # call -> why not compared
    heads: list[tuple[str, int]]  # (ONNX output, index of the Keras output it is)
    layouts: dict[str, str]
    fixed_batch: int | None
    nchw: bool
    runs_on: _Engine


def _match(traced: _Traced, proto: Any, contract: Contract, *, runs_on: _Engine) -> _Sides:
    from edgeseg.export._match import match_calls

    found = match_calls(proto, traced.trace, wanted=traced.wanted)
    tensors = {i: f.tensor for i, f in found.items() if f.tensor is not None}
    outputs = [o.name for o in proto.graph.output]
    keras_outputs = contract.source.get("keras_outputs") or [0]
    if len(keras_outputs) != len(outputs) or any(not 0 <= k < len(traced.first_outputs) for k in keras_outputs):
        raise EdgesegError(
            f"The ONNX file does not come from this Keras model: it has {len(outputs)} output(s) for Keras outputs "
            f"{keras_outputs}, and the model has {len(traced.first_outputs)}."
        )
    return _Sides(proto=proto, tensors=tensors, how={i: f.how for i, f in found.items() if f.tensor is not None},
                  reasons={i: f.reason for i, f in found.items() if f.tensor is None},
                  heads=list(zip(outputs, keras_outputs)),
                  layouts=_propagate_layouts(proto.graph, contract.input.layout), fixed_batch=_fixed_batch(proto),
                  nchw=contract.input.layout == "NCHW", runs_on=runs_on)


# -- 4. compare ----------------------------------------------------------------------------


@dataclass
class _Tally:
    """Running comparison over all inputs: file against Keras per call and per output, argmax agreement."""

    layers: dict[int, Errors]
    outputs: list[Errors]
    late_reasons: dict[int, str] = field(default_factory=dict)  # shapes that differed on the values
    agree: int = 0
    pixels: int = 0
    ran: Any = None  # edgeseg.runtime.probe.Ran: the engine, device and precision that computed the file's side
    instrumentation: Any = None  # edgeseg.runtime.probe.Instrumentation

    def compared(self) -> list[int]:
        return [i for i in self.layers if i not in self.late_reasons]


def _feeds(inputs: _Inputs, sides: _Sides) -> Iterator[np.ndarray]:
    # One input at a time (intermediate outputs of a full-size FCN-8 take ~150 MB per image);
    # a fixed-batch export gets that input repeated to its batch size.
    for batch in inputs.batches:
        n = batch.shape[0]
        feed = np.repeat(batch, sides.fixed_batch, axis=0) if sides.fixed_batch not in (None, n) else batch
        yield np.ascontiguousarray(feed.transpose(0, 3, 1, 2) if sides.nchw and feed.ndim == 4 else feed)


def _keras_runs(reference: _Reference, inputs: _Inputs, traced: _Traced, wanted: Sequence[int]) -> Iterator[tuple[dict[int, np.ndarray], list[np.ndarray]]]:
    """Keras' values of the ``wanted`` calls and its outputs, input by input (the first from the trace)."""
    from edgeseg.export._trace import call_values

    yield {i: traced.first[i] for i in wanted if i in traced.first}, traced.first_outputs
    names = {traced.trace.calls[i].name: i for i in wanted}
    for batch in inputs.batches[1:]:
        values, outputs = call_values(reference.keras, batch, names=list(names))
        yield {names[n]: v for n, v in values.items()}, outputs


def _compare_all(inputs: _Inputs, *, reference: _Reference, traced: _Traced, sides: _Sides, contract: Contract) -> _Tally:
    names = [*sides.tensors.values(), *(name for name, _ in sides.heads)]
    tensors = sides.runs_on.tensors(sides.proto, names, _feeds(inputs, sides))
    tally = _Tally(layers={i: Errors() for i in sides.tensors}, outputs=[Errors() for _ in sides.heads],
                   ran=tensors.ran, instrumentation=tensors.instrumentation)
    log.info("edgeseg verify: %d input(s), layer by layer, on %s", inputs.count, tensors.ran.describe())
    bar = _bar(inputs.count)
    runs = zip(_keras_runs(reference, inputs, traced, list(sides.tensors)), tensors, inputs.batches)
    for (keras_values, keras_outputs), onnx_values, batch in runs:
        bar.update(1)
        n = batch.shape[0]
        for index, tensor in sides.tensors.items():
            if index in tally.late_reasons:
                continue
            expected = keras_values[index]
            got = onnx_values[tensor][:n]
            try:
                got = _to_nhwc(got, expected.shape, sides.layouts.get(tensor, "?"))
            except ValueError:
                tally.late_reasons[index] = (f"shape differs: its ONNX tensor `{tensor}` is {got.shape[1:]}, "
                                             f"Keras {expected.shape[1:]}")
                continue
            tally.layers[index].add(expected, got)
        for head, (name, k) in enumerate(sides.heads):
            expected = keras_outputs[k]
            try:
                got = _to_nhwc(onnx_values[name][:n], expected.shape, sides.layouts.get(name, "?"))
            except ValueError:
                raise EdgesegError(
                    f"The ONNX file does not come from this Keras model: its output `{name}` is "
                    f"{onnx_values[name].shape[1:]}, the model's {expected.shape[1:]}."
                ) from None
            tally.outputs[head].add(expected, got)
            if head == 0 and contract.kind == "segmentation":
                same = class_ids(expected, contract) == class_ids(got, contract)
                tally.agree += int(np.count_nonzero(same))
                tally.pixels += int(same.size)
    bar.close()
    tensors.close()
    return tally


# -- 5. settle -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settled:
    """Both sides against float64 for the layers (and outputs) whose file-vs-Keras error was near the bar."""

    file: dict[int, Errors] = field(default_factory=dict)
    keras: dict[int, Errors] = field(default_factory=dict)
    file_heads: dict[int, Errors] = field(default_factory=dict)
    keras_heads: dict[int, Errors] = field(default_factory=dict)
    note: str = ""


def _settle(reference: _Reference, inputs: _Inputs, *, traced: _Traced, sides: _Sides, tally: _Tally) -> _Settled:
    """Recompute the layers near the bar in float64: who is off, Keras or the file?

    Near means a file-vs-Keras error above ``NEAR`` of the bar. Both float32 sides round; where
    they differ by about the bar, the exact value tells whether the file is wrong or Keras is
    less exact than the file (GroupNormalization's variance: Keras 8.5e-5 off, the file 2.6e-5).
    Under the SQNR rule the engine's own rounding dwarfs Keras' float32 error: nothing to settle.
    """
    from edgeseg.export._cuda_friendly import reference_model
    from edgeseg.export._trace import call_values, float64_copy

    bar = reference.bar
    if not bar.relative:
        return _Settled()
    near = [i for i in tally.compared() if tally.layers[i].relative(bar.floor) >= NEAR * bar.tolerance]
    heads = [h for h, errors in enumerate(tally.outputs) if errors.relative(bar.floor) >= NEAR * bar.tolerance]
    if not near and not heads:
        return _Settled()
    log.info("edgeseg verify: %d layer(s) near the bar, recomputing them in float64", len(near) + len(heads))
    settled = _Settled(file={i: Errors() for i in near}, keras={i: Errors() for i in near},
                       file_heads={h: Errors() for h in heads}, keras_heads={h: Errors() for h in heads})
    names = {traced.trace.calls[i].name: i for i in near}
    try:
        # TensorFlow has no float64 kernel for a dilated transposed convolution anywhere: always the rewrite.
        base, _ = reference_model(reference.original, size=reference.size, force=True)
        exact, _ = float64_copy(base)
        wanted = [sides.tensors[i] for i in near] + [sides.heads[h][0] for h in heads]
        tensors = sides.runs_on.tensors(sides.proto, wanted, _feeds(inputs, sides))
        runs = zip(_keras_runs(reference, inputs, traced, near), tensors, inputs.batches)
        for (keras_values, keras_outputs), onnx_values, batch in runs:
            values, outputs = call_values(exact, batch, names=list(names))
            n = batch.shape[0]
            for name, index in names.items():
                tensor = sides.tensors[index]
                settled.file[index].add(values[name], _to_nhwc(onnx_values[tensor][:n], values[name].shape,
                                                                sides.layouts.get(tensor, "?")))
                settled.keras[index].add(values[name], keras_values[index])
            for h in heads:
                name, k = sides.heads[h]
                settled.file_heads[h].add(outputs[k], _to_nhwc(onnx_values[name][:n], outputs[k].shape,
                                                               sides.layouts.get(name, "?")))
                settled.keras_heads[h].add(outputs[k], keras_outputs[k])
        tensors.close()
    except Exception as error:  # noqa: BLE001 - float64 is a second opinion: without it the verdict is against Keras
        note = f"no float64 reference ({type(error).__name__}: {error})".splitlines()[0]
        log.warning("edgeseg verify: %s; layers near the bar are judged against Keras' float32.", note)
        return _Settled(note=note)
    return settled


# -- 6. report -----------------------------------------------------------------------------


def _report(reference: _Reference, inputs: _Inputs, *, traced: _Traced, sides: _Sides, tally: _Tally,
            settled: _Settled) -> VerifyReport:
    bar = reference.bar
    checks, not_compared, worse = _layer_checks(traced, sides=sides, tally=tally, settled=settled, bar=bar)
    output, heads = _output_entry(sides, tally=tally, settled=settled, bar=bar)
    first = next((c.name for c in checks if not c.ok), None)
    if first is None and not all(head["ok"] for head in heads):
        first = "output"
    return VerifyReport(
        ok=first is None and bool(checks),
        first_failure=first,
        bar=bar,
        inputs={"kind": inputs.kind, "count": inputs.count, "skipped": inputs.skipped},
        layers=tuple(checks),
        output=output,
        not_compared=tuple(not_compared),
        layers_total=len(traced.wanted),
        operations=traced.operations,
        reference=_described(reference, checks, settled),
        engine={**tally.ran.to_dict(), "why": sides.runs_on.why},
        ranked=tuple({"name": c.name, "sqnr_db": c.sqnr_db, "max_rel_err": c.max_rel_err, "ok": c.ok}
                     for c in sorted(checks, key=lambda c: -worse[c.name])),
        instrumentation=tally.instrumentation.to_dict(),
    )


def _layer_checks(traced: _Traced, *, sides: _Sides, tally: _Tally, settled: _Settled, bar: Bar
                  ) -> tuple[list[LayerCheck], list[dict[str, Any]], dict[str, float]]:
    """Each wanted layer call judged, or listed as not compared with the reason; and how bad each judged one is."""
    calls = traced.trace.calls
    checks, not_compared, worse = [], [], {}
    for index in traced.wanted:
        call, kind = calls[index], traced.types[index]
        if index not in sides.tensors or index in tally.late_reasons:
            reason = tally.late_reasons.get(index) or sides.reasons.get(index, "not found")
            not_compared.append({"name": call.name, "type": kind, "reason": reason})
            continue
        errors = tally.layers[index]
        ok, judged, float64 = _judged(errors, settled.file.get(index), settled.keras.get(index), bar)
        checks.append(LayerCheck(name=call.name, type=kind, shape=tuple(call.shape or ()), max_abs_err=errors.max_abs,
                                 max_rel_err=errors.relative(bar.floor), ok=ok, found=sides.how[index], reference=judged,
                                 float64=float64, sqnr_db=errors.sqnr_db))
        # Ranked by what the verdict was made on: the file's error against float64 where it was recomputed.
        worse[call.name] = badness(settled.file.get(index) or errors, bar)
    return checks, not_compared, worse


def _output_entry(sides: _Sides, *, tally: _Tally, settled: _Settled, bar: Bar
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The final output's verdict (the first head's, with every head's when there are several), and the heads."""
    heads = []
    for h, (name, k) in enumerate(sides.heads):
        errors = tally.outputs[h]
        ok, judged, float64 = _judged(errors, settled.file_heads.get(h), settled.keras_heads.get(h), bar)
        head = {"name": name, "keras_output": k, "max_abs_err": errors.max_abs, "max_rel_err": errors.relative(bar.floor),
                "sqnr_db": errors.sqnr_db, "ok": ok, "reference": judged}
        if float64 is not None:
            head["float64"] = float64
        heads.append(head)
    output = {**{key: value for key, value in heads[0].items() if key not in ("name", "keras_output")},
              "argmax_agreement": tally.agree / tally.pixels if tally.pixels else None}
    if len(heads) > 1:
        output["heads"] = heads
    return output, heads


def _described(reference: _Reference, checks: list[LayerCheck], settled: _Settled) -> dict[str, Any]:
    """What each verdict was judged against: Keras' outputs, float64 recomputations, rewrites, notes."""
    described: dict[str, Any] = {
        "keras": f"Keras' own outputs ({reference.precision_why})",
        "float64": [c.name for c in checks if c.reference == "float64"],
    }
    notes = []
    if reference.rewritten:
        described["rewritten"] = list(reference.rewritten)
        notes.append("TensorFlow on this CPU cannot compute a dilated Conv2DTranspose: "
                     f"{', '.join(reference.rewritten)} computed through the dilation-1 rewrite the export uses")
    if settled.note:
        notes.append(settled.note)
    if notes:
        described["note"] = "; ".join(notes)
    return described


def _judged(errors: Errors, file: Errors | None, keras: Errors | None, bar: Bar) -> tuple[bool, str, dict[str, Any] | None]:
    """The verdict of one tensor: against float64 where it was recomputed (the file's own error), else against Keras."""
    if file is None or keras is None:
        return judge(errors, bar), "keras", None
    f, k = file.relative(bar.floor), keras.relative(bar.floor)
    closer = "file" if f < k else "keras" if k < f else "same"
    return judge(file, bar, keras=keras), "float64", {"file_rel_err": f, "keras_rel_err": k, "closer": closer}


# -- helpers -------------------------------------------------------------------------------


def check_onnx_path(path: str | os.PathLike) -> Path:
    """The cheap checks of an ONNX path (no onnx, no TensorFlow needed): it exists and is not a ZIP archive."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"Cannot read model `{path}`: no such file.")
    with open(path, "rb") as stream:
        head = stream.read(4)
    if head.startswith(b"PK"):
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file (got a ZIP archive, such as a .keras file).")
    return path


def load_onnx(path: str | os.PathLike) -> Any:
    """Read an ONNX file; anything else is one clear error."""
    import onnx

    path = check_onnx_path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError and others for non-ONNX bytes
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file ({type(error).__name__}).") from None
    if not proto.graph.node:
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file (no graph inside).")
    return proto



def _propagate_layouts(graph: Any, input_layout: str) -> dict[str, str]:
    """Each tensor's layout as far as it can be followed (used only when shapes cannot tell)."""
    layout = {graph.input[0].name: input_layout}
    for node in graph.node:
        known = next((layout[i] for i in node.input if i in layout), None)
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            result = {("NHWC", (0, 3, 1, 2)): "NCHW", ("NCHW", (0, 2, 3, 1)): "NHWC"}.get((known, tuple(perm or ())))
        elif node.op_type in _NCHW_OPS:
            result = "NCHW"
        elif node.op_type == "Reshape":
            result = None
        else:
            result = known
        for output in node.output:
            if result:
                layout[output] = result
    return layout


def _to_nhwc(array: np.ndarray, keras_shape: tuple[int, ...], layout: str) -> np.ndarray:
    """The ONNX value in Keras' channels-last layout; ValueError when its shape fits neither layout."""
    keras_shape = tuple(keras_shape)
    if array.ndim == 4 and len(keras_shape) == 3 and array.size == int(np.prod(keras_shape)):
        return array.reshape(keras_shape)  # a flat (N, H*W, C) output the export made (N, H, W, C)
    if array.ndim != 4 or len(keras_shape) != 4:
        if array.shape != keras_shape:
            raise ValueError(f"{array.shape} is not {keras_shape}")
        return array
    as_nhwc = array.shape == keras_shape
    as_nchw = array.shape == (keras_shape[0], keras_shape[3], keras_shape[1], keras_shape[2])
    if as_nchw and (not as_nhwc or layout == "NCHW"):
        return array.transpose(0, 2, 3, 1)
    if as_nhwc:
        return array
    raise ValueError(f"{array.shape} fits neither layout of {keras_shape}")


def _fixed_batch(proto: Any) -> int | None:
    dim = proto.graph.input[0].type.tensor_type.shape.dim
    return int(dim[0].dim_value) if dim and dim[0].HasField("dim_value") else None


@dataclass(frozen=True)
class _Inputs:
    """What both sides are fed: batches of one input each (NHWC), their kind and count, files skipped."""

    batches: list[np.ndarray]
    kind: str  # "images" or "random"
    skipped: int = 0

    @property
    def count(self) -> int:
        return len(self.batches)


def _inputs(model: Any, contract: Contract, *, images: str | os.PathLike | None, random: int, seed: int) -> _Inputs:
    """Inputs to feed both sides: images through the contract, or random."""
    import dataclasses

    nhwc = dataclasses.replace(contract.input, layout="NHWC")
    if images is not None:
        if contract.kind == "decoder":
            raise EdgesegError("A decoder takes latent codes, not images: verify it with --random N, not --images.")
        return _image_inputs(Path(images), nhwc=nhwc)
    if random < 1:
        raise EdgesegError(f"--random must be at least 1, got {random}.")
    rng = np.random.default_rng(seed)
    if contract.kind == "decoder":
        shape = tuple(d if d is not None else 1 for d in model.inputs[0].shape[1:])
        return _Inputs(batches=[rng.random((1, *shape), dtype=np.float32) for _ in range(random)], kind="random")
    size = (contract.input.height, contract.input.width, 3)
    return _Inputs(batches=[preprocess(rng.integers(0, 256, size, dtype=np.uint8), nhwc)[0] for _ in range(random)],
                   kind="random")


def _image_inputs(folder: Path, *, nhwc: InputSpec) -> _Inputs:
    """The folder's images through the contract's preprocessing; an unreadable one is skipped and counted."""
    if not folder.is_dir():
        raise EdgesegError(f"--images must be a folder of images, got `{folder}` (not a folder).")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    batches, skipped = [], 0
    for path in files:
        try:
            batches.append(preprocess(read_image(path), nhwc)[0])
        except BadInputError as error:
            skipped += 1
            log.warning("skipped %s: %s", path.name, error)
    if not batches:
        raise EdgesegError(f"--images `{folder}` holds no readable image ({skipped} unreadable, {len(files)} files).")
    return _Inputs(batches=batches, kind="images", skipped=skipped)


def _bar(count: int) -> Any:
    # A bar where a person watches (stderr is a terminal); logs and pipes get the one line above.
    from edgeseg.runtime.progress import Progress

    return Progress(count, desc="verify", unit="input", leave=False, every=None)
