"""Layer-by-layer parity between a Keras model and its ONNX export.

Both sides run the same inputs. On the Keras side the model's graph is re-run flat (nested
sub-models entered) with every inspected layer's output kept. On the ONNX side the exported
file itself is run with extra graph outputs: each Keras layer's tensor is found by name, since
every node tf2onnx writes is named ``[edgeseg/]<model>/<layer>/<op>`` (with Keras' ``_1``
scope suffixes). So a file altered after export fails here, and the report names the layer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.export._graph import INSPECTED_TYPES, TRANSPOSED_TYPES, walk
from edgeseg.runtime import preprocess, read_image
from edgeseg.runtime.contract import Contract, InputSpec
from edgeseg.runtime.postprocess import class_ids
from edgeseg.runtime.errors import BadInputError, EdgesegError
from edgeseg.runtime.probe import Bar, EngineProbe, TensorStats, ranked, resolve_target

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
_INSERTED = re.compile(r"__\d+(:\d+)?$")  # nodes tf2onnx adds (layout transposes, reshapes)
AMBIGUOUS = ""  # a layer whose ONNX scope cannot be told apart from another layer's
_NCHW_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization"})


@dataclass(frozen=True)
class LayerCheck:
    """One layer's comparison (the verify report's fields, README "Reports")."""

    name: str
    type: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    ok: bool
    sqnr_db: float | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The whole comparison; ``to_dict`` is the report JSON, ``table`` the terminal view."""

    ok: bool
    first_failure: str | None
    tolerance: float
    inputs: dict[str, Any]
    layers: tuple[LayerCheck, ...]
    output: dict[str, Any]
    not_compared: tuple[dict[str, str], ...] = ()  # {"name", "type", "reason"} per layer verify could not check
    engine: dict[str, Any] = field(default_factory=dict)  # what ran: engine, device, precision, why (probe.Ran)
    bar: dict[str, Any] = field(default_factory=dict)  # the precision's pass mark (probe.Bar)
    ranked: tuple[dict[str, Any], ...] = ()  # compared layers, worst first
    instrumentation: dict[str, Any] = field(default_factory=dict)  # probed vs deployed compile

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "first_failure": self.first_failure,
            "tolerance": self.tolerance,
            "inputs": dict(self.inputs),
            "layers": [{**vars(check), "shape": list(check.shape)} for check in self.layers],
            "output": dict(self.output),
            "not_compared": [dict(item) for item in self.not_compared],
            "engine": dict(self.engine),
            "bar": dict(self.bar),
            "ranked": [dict(item) for item in self.ranked],
            "instrumentation": dict(self.instrumentation),
        }

    def summary(self) -> dict[str, Any]:
        """The contract's ``verified`` section."""
        errors = [c.max_abs_err for c in self.layers] + [self.output.get("max_abs_err", 0.0)]
        return {"max_abs_err": float(max(errors)), "layers_checked": len(self.layers), "ok": self.ok}

    def table(self) -> str:
        width = max([len("layer")] + [len(c.name) for c in self.layers])
        rows = [f"{'layer':<{width}}  {'type':<16} {'shape':<18} {'max_abs_err':>11} {'max_rel_err':>11} {'sqnr_db':>7}  ok"]
        for c in self.layers:
            shape = "x".join(str(d) for d in c.shape)
            mark = "ok" if c.ok else "FAIL"
            rows.append(f"{c.name:<{width}}  {c.type:<16} {shape:<18} {c.max_abs_err:>11.3g} {c.max_rel_err:>11.3g} "
                        f"{c.sqnr_db if c.sqnr_db is not None else float('nan'):>7.1f}  {mark}")
        for item in self.not_compared:
            rows.append(f"{item['name']:<{width}}  {item['type']:<16} not compared: {item['reason']}")
        out = f"output: max_abs_err {self.output['max_abs_err']:.3g}"
        if self.output.get("argmax_agreement") is not None:
            out += f", argmax agreement {self.output['argmax_agreement']:.6f}"
        verdict = "all layers within tolerance" if self.ok else f"FIRST FAILURE: {self.first_failure}"
        inputs = f"inputs: {self.inputs['count']} {self.inputs['kind']}"
        if self.inputs.get("skipped"):
            inputs += f" ({self.inputs['skipped']} unreadable, skipped)"
        bar = Bar(**self.bar).describe() if self.bar else f"tolerance {self.tolerance:g} x max(1, range)"
        lines = [*rows, out, f"{inputs}; {bar}; {verdict}"]
        if self.engine:
            lines.append(f"engine: {self.engine['engine']} on {self.engine['device']}, {self.engine['precision']} "
                         f"({self.engine['detail']})")
        if self.instrumentation and not self.instrumentation.get("same_as_deployed", True):
            lines.append(f"note: with the layers read out the engine computed the output differently (max-abs "
                         f"{self.instrumentation['max_abs_diff']:.3g}); the output above is the deployed one's")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Probe:
    """A Keras layer whose output is compared: report name, class, sub-model path, output."""

    name: str
    type: str
    layer_name: str
    path: tuple[str, ...]
    tensor: Any
    producer: str | None  # report name of the layer feeding it (for layers ONNX folds away)


def verify_files(
    keras_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    random: int = 4,
    layers: str = "all",
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    engine: str = "onnxruntime",
    precision: str = "fp32",
    sqnr: dict[str, float] | None = None,
) -> VerifyReport:
    """Compare ``keras_path`` with its export ``onnx_path`` layer by layer.

    ``engine``/``precision``: where the ONNX side runs (:mod:`edgeseg.runtime.probe`); ``auto`` is what
    ``--engine auto`` runs the file with. ``sqnr``: SQNR bars in dB per lossy precision (defaults
    :data:`edgeseg.runtime.probe.DEFAULT_SQNR_DB`).

    Example::

        report = verify_files("model.keras", "model.onnx", images="frames/")
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
    model, _ = load_model(keras_path)
    recorded = contract.source.get("keras_sha256")
    if recorded and recorded != sha256_of(keras_path):
        log.warning("`%s` was exported from a different .keras file (sha256 %s...); comparing anyway.", onnx_path, recorded[:12])
    target = resolve_target(onnx_path, engine=engine, precision=precision)
    return verify_models(
        model, proto, contract, images=images, random=random, layers=layers, tolerance=tolerance, seed=seed,
        engine=target.engine, precision=target.precision, sqnr=sqnr, onnx_path=onnx_path, why=target.why,
    )


def load_onnx(path: str | os.PathLike) -> Any:
    """Read an ONNX file; anything else is one clear error."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"Cannot read model `{path}`: no such file.")
    with open(path, "rb") as stream:
        head = stream.read(4)
    if head.startswith(b"PK"):
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file (got a ZIP archive, such as a .keras file).")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError and others for non-ONNX bytes
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file ({type(error).__name__}).") from None
    if not proto.graph.node:
        raise EdgesegError(f"Cannot read model `{path}`: not an ONNX file (no graph inside).")
    return proto


def verify_models(
    model: Any,
    proto: Any,
    contract: Contract,
    *,
    images: str | os.PathLike | None = None,
    random: int = 4,
    layers: str = "all",
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    engine: str = "onnxruntime",
    precision: str = "fp32",
    sqnr: dict[str, float] | None = None,
    onnx_path: str | os.PathLike | None = None,
    why: str = "asked for",
) -> VerifyReport:
    """Compare Keras ``model`` with ONNX ``proto`` (its export, carrying ``contract``).

    Inputs are the images in ``images`` (through ``contract``'s preprocessing; unreadable ones
    are skipped and counted) or ``random`` seeded random ones. Raises ``EdgesegError`` when the
    ONNX graph does not come from ``model`` (a layer missing, a shape that fits neither layout).

    Example::

        report = verify_models(model, onnx.load("m.onnx"), contract, random=2)
        print(report.table())
    """
    _check_options(layers=layers, tolerance=tolerance)
    bar = Bar.for_precision(precision, tolerance=tolerance, sqnr=sqnr)
    sides, not_compared = _instrument(model, proto, contract, engine=(engine, precision, onnx_path))
    inputs = _inputs(model, contract, images=images, random=random, seed=seed)
    tally = _compare_all(inputs, sides=sides, contract=contract)
    wanted = TRANSPOSED_TYPES if layers == "transposed" else INSPECTED_TYPES
    checks = _layer_checks(sides.probes, tally, wanted=wanted, bar=bar)
    not_compared += _unmatched(sides.probes, tally, wanted=wanted)
    if layers == "all":
        not_compared += _without_rule(sides.everyone)
    output, output_ok = _output_summary(tally, bar=bar)
    first = next((c.name for c in checks if not c.ok), None)
    if first is None and not output_ok:
        first = "output"
    return VerifyReport(
        ok=first is None,
        first_failure=first,
        tolerance=tolerance,
        inputs={"kind": inputs.kind, "count": inputs.count, "skipped": inputs.skipped},
        layers=tuple(checks),
        output=output,
        not_compared=tuple(not_compared),
        engine={**sides.session.ran.to_dict(), "why": why},
        bar=bar.to_dict(),
        ranked=tuple(ranked({c.name: tally.stats[c.name] for c in checks}, bar)),
        instrumentation=sides.session.instrumentation.to_dict(),
    )


def _check_options(*, layers: str, tolerance: float) -> None:
    if layers not in ("all", "transposed"):
        raise EdgesegError(f"--layers must be `all` or `transposed`, got {layers!r}.")
    if not tolerance > 0:
        raise EdgesegError(f"--tolerance must be a positive number, got {tolerance!r}.")


def _without_rule(everyone: dict[str, _Probe]) -> list[dict[str, str]]:
    return [{"name": p.name, "type": p.type, "reason": "verify has no rule for this layer type"}
            for p in everyone.values() if p.type not in INSPECTED_TYPES]


@dataclass(frozen=True)
class _Sides:
    """Both sides ready to run the same input: Keras re-run flat, ONNX with every probe as an output."""

    probes: list[_Probe]  # inspected layers in graph order, the model's output ("<output>") last
    everyone: dict[str, _Probe]  # every leaf layer call by report name
    keras_model: Any
    session: Any
    onnx_names: list[str]  # the ONNX tensor of each probe
    layouts: dict[str, str]  # each probe's ONNX layout, as far as it could be followed
    unmatched: dict[str, str]  # probes no ONNX tensor was found for, with the reason
    input_name: str
    fixed_batch: int | None
    nchw: bool


def _instrument(model: Any, proto: Any, contract: Contract, *, engine: tuple[str, str, Any]
                ) -> tuple[_Sides, list[dict[str, str]]]:
    """Both sides, and the layers the Keras side could not probe (listed as not compared)."""
    probes, everyone, probe_model, not_compared = _probes_or_output(model, contract)
    session, onnx_names, layouts, unmatched = _onnx_probe(proto, probes, everyone, contract, engine=engine)
    sides = _Sides(probes=probes, everyone=everyone, keras_model=probe_model, session=session,
                   onnx_names=onnx_names, layouts=layouts, unmatched=unmatched,
                   input_name=proto.graph.input[0].name, fixed_batch=_fixed_batch(proto),
                   nchw=contract.input.layout == "NCHW")
    return sides, not_compared


@dataclass
class _Tally:
    """Running comparison over all inputs: per-probe errors and the output's argmax agreement."""

    stats: dict[str, TensorStats]
    unmatched: dict[str, str]  # probes not compared, with the reason (grows when an ONNX shape fits neither layout)
    agree: int = 0
    pixels: int = 0


def _compare_all(inputs: _Inputs, *, sides: _Sides, contract: Contract) -> _Tally:
    # The last probe is the model's output.
    tally = _Tally(stats={p.name: TensorStats() for p in sides.probes}, unmatched=dict(sides.unmatched))
    log.info("edgeseg verify: %d input(s), layer by layer", inputs.count)
    bar = _bar(inputs.count)
    for batch in inputs.batches:
        if bar is not None:
            bar.update(1)
        keras_out, onnx_out = _compare_one(batch, sides=sides, tally=tally)
        if contract.kind == "segmentation":
            same = class_ids(keras_out, contract) == class_ids(onnx_out, contract)
            tally.agree += int(np.count_nonzero(same))
            tally.pixels += int(same.size)
    if bar is not None:
        bar.close()
    return tally


def _compare_one(batch: np.ndarray, *, sides: _Sides, tally: _Tally) -> tuple[np.ndarray, np.ndarray]:
    """Run one input on both sides and add every probe's error; returns the final outputs (Keras, ONNX NHWC)."""
    # One input at a time (intermediate outputs of a full-size FCN-8 take ~150 MB per image);
    # a fixed-batch export gets that input repeated to its batch size.
    n = batch.shape[0]
    feed = np.repeat(batch, sides.fixed_batch, axis=0) if sides.fixed_batch not in (None, n) else batch
    expected = [np.asarray(a)[:n] for a in _as_list(sides.keras_model(feed, training=False))]
    onnx_feed = feed.transpose(0, 3, 1, 2) if sides.nchw and feed.ndim == 4 else feed
    got = _run(sides.session, sides.onnx_names, sides.input_name, np.ascontiguousarray(onnx_feed))
    for probe, keras_out, onnx_out in zip(sides.probes, expected, got):
        if probe.name in tally.unmatched:
            continue
        try:
            onnx_out = _to_nhwc(onnx_out[:n], keras_out.shape, sides.layouts[probe.name], probe.name)
        except EdgesegError:
            if probe.name == "<output>":
                raise
            tally.unmatched[probe.name] = f"its ONNX tensor has shape {onnx_out.shape[1:]}, Keras {keras_out.shape[1:]}"
            continue
        tally.stats[probe.name].add(keras_out, onnx_out)
    return keras_out, onnx_out


def _layer_checks(probes: list[_Probe], tally: _Tally, *, wanted: frozenset[str], bar: Bar) -> list[LayerCheck]:
    """One check per compared layer of the wanted types (the model's output is reported apart)."""
    checks = []
    for probe in probes:
        if probe.type not in wanted or probe.name == "<output>" or probe.name in tally.unmatched:
            continue
        s = tally.stats[probe.name]
        checks.append(
            LayerCheck(
                name=probe.name,
                type=probe.type,
                shape=tuple(int(d) for d in probe.tensor.shape[1:]),
                max_abs_err=float(s.max_abs),
                max_rel_err=float(s.max_rel),
                ok=bar.judge(s),
                sqnr_db=s.sqnr_db,
            )
        )
    return checks


def _unmatched(probes: list[_Probe], tally: _Tally, *, wanted: frozenset[str]) -> list[dict[str, str]]:
    """The layers of the wanted types no ONNX tensor could be compared with, and why."""
    return [{"name": p.name, "type": p.type, "reason": tally.unmatched[p.name]}
            for p in probes if p.type in wanted and p.name != "<output>" and p.name in tally.unmatched]


def _output_summary(tally: _Tally, *, bar: Bar) -> tuple[dict[str, Any], bool]:
    final = tally.stats["<output>"]
    agreement = tally.agree / tally.pixels if tally.pixels else None
    return {"max_abs_err": float(final.max_abs), "sqnr_db": final.sqnr_db, "argmax_agreement": agreement}, bar.judge(final)


def _run(session: EngineProbe, names: list[str], input_name: str, feed: np.ndarray) -> list[np.ndarray]:
    # A probe of a layer ONNX folded away may be the graph input itself: the probe hands that back too.
    values = session.run(feed)
    return [values[n] for n in names]


def _bar(count: int) -> Any:
    # A bar where a person watches (stderr is a terminal); logs and pipes get the one line above.
    from edgeseg.runtime.progress import Progress

    return Progress(count, desc="verify", unit="input", leave=False, every=None)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _probes_or_output(model: Any, contract: Contract) -> tuple[list[_Probe], dict[str, _Probe], Any, list[dict[str, str]]]:
    """The layer probes; when the Keras graph cannot be re-run layer by layer, the final output alone."""
    import keras

    try:
        probes, everyone, probe_model = _keras_probe(model, contract)
        return probes, everyone, probe_model, []
    except EdgesegError:
        raise
    except Exception as error:  # Keras ops used as functions and others the layer walk cannot re-run
        reason = f"the Keras graph cannot be re-run layer by layer ({type(error).__name__}: {error})".splitlines()[0]
    from edgeseg.export._graph import leaf_layers

    shape = _input_shape(model, contract)
    image = keras.Input(shape=shape, name="image")
    final = _flat(model(image))[0]
    skipped = [{"name": layer.name, "type": type(layer).__name__, "reason": reason} for _, layer in leaf_layers(model)]
    probe = _Probe("<output>", "output", "", (), final, None)
    return [probe], {}, keras.Model(image, [final]), skipped


def _input_shape(model: Any, contract: Contract) -> tuple[Any, ...]:
    shape = list(model.inputs[0].shape[1:])
    if len(shape) == 3 and contract.kind != "decoder":
        shape[0] = shape[0] or contract.input.height
        shape[1] = shape[1] or contract.input.width
    return tuple(shape)


def _keras_probe(model: Any, contract: Contract) -> tuple[list[_Probe], dict[str, _Probe], Any]:
    """Every inspected layer's output (graph order) plus the final output, as one flat Keras model.

    Also returns every leaf layer call by report name: non-inspected layers stay known as
    producers for inspected layers that ONNX folds away.
    """
    import keras

    image = keras.Input(shape=_input_shape(model, contract), name="image")
    names = _report_names(model)
    producers: dict[int, str] = {}
    probes: list[_Probe] = []

    def hook(layer: Any, args: tuple, kwargs: dict, path: tuple[str, ...]) -> Any:
        out = layer(*args, **kwargs)
        name = names[(path, layer.name)]
        feeding = next((producers[id(a)] for a in _flat(args) if id(a) in producers), None)
        for tensor in _flat(out):
            producers[id(tensor)] = name
        probes.append(_Probe(name, type(layer).__name__, layer.name, path, out, feeding))
        return out

    final = walk(model, [image], hook)
    final = _flat(final)[0]
    kept = [p for p in probes if p.type in INSPECTED_TYPES]
    probes_out = [*kept, _Probe("<output>", "output", "", (), final, None)]
    probe_model = keras.Model(image, [p.tensor for p in probes_out])
    return probes_out, {p.name: p for p in probes}, probe_model


def _report_names(model: Any) -> dict[tuple[tuple[str, ...], str], str]:
    from edgeseg.export._graph import leaf_layers

    leaves = leaf_layers(model)
    counts: dict[str, int] = {}
    for _, layer in leaves:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    # Keras names; a name two sub-models share is qualified by its sub-model path.
    return {(p, l.name): l.name if counts[l.name] == 1 else "/".join((*p, l.name)) for p, l in leaves}


def _onnx_probe(
    proto: Any, probes: list[_Probe], everyone: dict[str, _Probe], contract: Contract, *, engine: tuple[str, str, Any]
) -> tuple[EngineProbe, list[str], dict[str, str], dict[str, str]]:
    """The deployed engine on ``proto`` with each probe's tensor read out (:class:`EngineProbe`).

    Also returns the probes no ONNX tensor could be found for, with the reason (listed as not compared).
    """
    graph = proto.graph
    scope_tensor = _layer_tensors(graph, list(everyone.values())) if everyone else {}
    if scope_tensor is None:
        raise EdgesegError(
            "The ONNX file does not come from this Keras model: none of its nodes carry the model's layer names "
            "(was it made by `edgeseg export` from this .keras file?)."
        )
    graph_input = graph.input[0].name
    names, layouts = [], _propagate_layouts(graph, contract.input.layout)
    chosen: dict[str, str] = {}
    unmatched: dict[str, str] = {}
    for probe in probes:
        if probe.name == "<output>":
            tensor = graph.output[0].name
        else:
            tensor, reason = _probe_tensor(probe, scope_tensor=scope_tensor, everyone=everyone, graph_input=graph_input)
            if reason is not None:
                unmatched[probe.name] = reason
        names.append(tensor)
        chosen[probe.name] = layouts.get(tensor, "?")
    name, precision, path = engine
    session = EngineProbe(path if path is not None else proto, names, engine=name, precision=precision, proto=proto)
    chosen["<output>"] = layouts.get(graph.output[0].name, "?")
    return session, names, chosen, unmatched


def _probe_tensor(probe: _Probe, *, scope_tensor: dict[str, str], everyone: dict[str, _Probe],
                  graph_input: str) -> tuple[str, str | None]:
    """The ONNX tensor holding ``probe``'s output, and why it cannot be compared (None when it can).

    A probe that cannot be compared gets the graph input as a placeholder tensor.
    """
    tensor = scope_tensor.get(probe.name)
    reason = None
    if tensor == AMBIGUOUS:
        reason = "its ONNX nodes cannot be told apart from another layer's (same name scope)"
        tensor = graph_input
    cursor = probe
    while tensor is None and cursor is not None:
        if cursor.type in ("Conv2D", "Conv2DTranspose", "SeparableConv2D", "DepthwiseConv2D", "Dense"):
            # A layer with weights cannot be folded away: its nodes were renamed or merged.
            return graph_input, f"no ONNX node carries the name of layer `{cursor.name}`"
        # A layer ONNX folded away (a zero crop, a linear activation) outputs its input.
        upstream = cursor.producer
        tensor = graph_input if upstream is None else scope_tensor.get(upstream)
        cursor = everyone.get(upstream) if upstream is not None else None
    return tensor, reason


def _layer_tensors(graph: Any, layers: list[_Probe]) -> dict[str, str] | None:
    """Report name -> the ONNX tensor holding that layer's output (the last node of its scope).

    TensorFlow uniquifies name scopes while tracing, so layer ``conv2d`` may appear as scope
    ``conv2d_1`` and layer ``conv2d_1`` as ``conv2d_1_2``. A scope matches a layer when it is the
    layer's name, optionally followed by ``_<digits>``; ambiguities are settled by elimination
    (a layer has one scope), then by order of appearance.
    """
    last_node, options = _scopes(graph, layers)
    assigned = _assign_scopes(options)
    found = {name: last_node.get(scope, AMBIGUOUS) for name, scope in assigned.items()}
    return found or None


def _scopes(graph: Any, layers: list[_Probe]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Per layer scope in the graph: the output of its last node, and the report names it may be (best first)."""
    by_name: dict[str, list[_Probe]] = {}
    order = {id(layer): i for i, layer in enumerate(layers)}
    for layer in layers:
        by_name.setdefault(layer.layer_name, []).append(layer)
    last_node: dict[str, str] = {}  # scope path -> output of its last node
    options: dict[str, list[str]] = {}  # scope path -> candidate report names
    for node in graph.node:
        parts = node.name.split("/")
        if len(parts) < 2 or _INSERTED.search(node.name):
            continue
        depth, names = _layer_scope(parts, by_name)
        if not names:
            continue
        scope = "/".join(parts[: depth + 1])
        last_node[scope] = node.output[0]
        if scope not in options:
            held = [c for c in names if all(any(_matches(q, m) for q in parts[:depth]) for m in c.path)]
            options[scope] = [c.name for c in sorted(held or names, key=lambda c: order[id(c)])]
    return last_node, options


def _layer_scope(parts: list[str], by_name: dict[str, list[_Probe]]) -> tuple[int, list[_Probe]]:
    """The depth of the innermost layer scope in a node's name parts, and the layers it may be ([] for none)."""
    for depth in range(len(parts) - 2, -1, -1):
        names = _scope_candidates(parts[depth], by_name)
        if not names:
            continue
        while depth > 0 and _scope_candidates(parts[depth - 1], by_name):
            # An op scope named like a layer (SeparableConv2D's `separable_conv2d`) sits inside the
            # layer's own scope: the outer one of a run of matching scopes is the layer.
            depth -= 1
            names = _scope_candidates(parts[depth], by_name)
        return depth, names
    return 0, []


def _assign_scopes(options: dict[str, list[str]]) -> dict[str, str]:
    """Report name -> scope: by elimination (a layer has one scope), TensorFlow's suffix rule, then order."""
    assigned: dict[str, str] = {}
    pending = dict(options)
    while pending:
        progress = False
        for scope, names in list(pending.items()):
            free = [n for n in names if n not in assigned]
            if len(free) <= 1:
                if free:
                    assigned[free[0]] = scope
                del pending[scope]
                progress = True
        if not progress and _pair_by_one_suffix(pending, assigned):
            continue
        if not progress:  # several scopes share candidates: pair them up in order of appearance
            scope = next(iter(pending))
            free = [n for n in pending.pop(scope) if n not in assigned]
            assigned[free[0]] = scope
    return assigned


def _pair_by_one_suffix(pending: dict[str, list[str]], assigned: dict[str, str]) -> bool:
    """Settle shared candidates by TensorFlow's rule: a traced layer's scope is its name plus one `_<n>`.

    Scope `bn_1` is layer `bn` and scope `bn_1_2` layer `bn_1`, whatever order the nodes come in,
    so repeated and rewritten exports pair the same way. Returns whether anything was paired.
    """
    paired = False
    for scope, names in list(pending.items()):
        base = re.fullmatch(r"(.+)_\d+", scope.rsplit("/", 1)[-1])
        name = next((n for n in names if base and n.rsplit("/", 1)[-1] == base.group(1) and n not in assigned), None)
        if name is not None:
            assigned[name] = scope
            del pending[scope]
            paired = True
    return paired


def _scope_candidates(part: str, by_name: dict[str, list[_Probe]]) -> list[_Probe]:
    # A scope `a_b_1_2` may be layer `a_b_1_2`, `a_b_1` or `a_b` (each a name plus `_<digits>`).
    found = list(by_name.get(part, ()))
    base = part
    while (match := re.fullmatch(r"(.+)_\d+", base)) is not None:
        base = match.group(1)
        found += by_name.get(base, ())
    return found


def _matches(scope: str, name: str) -> bool:
    return scope == name or re.fullmatch(re.escape(name) + r"(_\d+)+", scope) is not None


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


def _to_nhwc(array: np.ndarray, keras_shape: tuple[int, ...], layout: str, name: str) -> np.ndarray:
    """The ONNX tensor in Keras' channels-last layout, or an error if its shape fits neither."""
    keras_shape = tuple(keras_shape)
    if array.ndim == 4 and len(keras_shape) == 3 and array.size == int(np.prod(keras_shape)):
        return array.reshape(keras_shape)  # a flat (N, H*W, C) output the export made (N, H, W, C)
    if array.ndim != 4:
        if array.shape != keras_shape:
            raise _mismatch(name, keras_shape, array.shape)
        return array
    as_nhwc = array.shape == keras_shape
    as_nchw = array.shape == (keras_shape[0], keras_shape[3], keras_shape[1], keras_shape[2])
    if as_nchw and (not as_nhwc or layout == "NCHW"):
        return array.transpose(0, 2, 3, 1)
    if as_nhwc:
        return array
    raise _mismatch(name, keras_shape, array.shape)


def _mismatch(name: str, keras_shape: Sequence[int], onnx_shape: Sequence[int]) -> EdgesegError:
    return EdgesegError(
        f"The ONNX file does not come from this Keras model: layer `{name}` is {tuple(keras_shape)} in Keras "
        f"but {tuple(onnx_shape)} in ONNX."
    )


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


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    return [value]
