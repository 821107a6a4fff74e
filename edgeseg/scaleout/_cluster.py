"""Reaching a Ray cluster and checking, before a job starts, that its workers fit there.

``local`` always starts a Ray of its own for the job (``ray.init(address="local")``: never a cluster
already running on this machine, whatever ``RAY_ADDRESS`` says); ``auto`` and ``ray://host:port``
join one and say which. Ray's own start-up lines (its token-authentication notice, "Started a local
Ray instance") are kept to errors unless ``-v``, and the workers' output is not relayed
(``log_to_driver=False``): a worker's warnings come back through the driver's own log, without Ray's
colour codes, so a piped stderr holds plain lines.

The fit check reads the cluster's nodes (``ray.nodes()``): a worker needs its CPUs, GPUs and memory on
one node, so the check counts workers per node, not resources in total. A job that cannot fit is
refused in one line naming what is missing, before any actor exists; with ``autoscale`` it asks the
autoscaler for the resources (``ray.autoscaler.sdk.request_resources``) and waits, saying so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgeseg.runtime import EdgesegError

log = logging.getLogger("edgeseg.scaleout")

GIB = 1024 ** 3


@dataclass(frozen=True)
class Joined:
    """Which Ray the job runs on: ``started`` (a local one this job started and stops), its GCS address."""

    address: str
    started: bool
    gcs: str = ""
    nodes: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        return describe_nodes(self.nodes)


def connect(ray: Any, address: str) -> Joined:
    """Join or start Ray for a job, as ``--ray ADDRESS`` says; a Ray this process already joined is used as it is."""
    if ray.is_initialized():
        joined = Joined(address, False, _gcs(ray), alive_nodes(ray))
        log.info("Ray: using the cluster this process already joined (%s): %s", joined.gcs or "?", joined.describe())
        return joined
    quiet = logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR
    common = {"log_to_driver": False, "logging_level": quiet}
    if address == "local":
        with _utf8_command_line(ray):
            ray.init(address="local", include_dashboard=False, **common)
        joined = Joined(address, True, _gcs(ray), alive_nodes(ray))
        log.info("Ray: started a local instance for this job (%s); it stops when the job ends", joined.describe())
        return joined
    if address == "auto" or address.startswith("ray://") or ":" in address:
        try:
            with _utf8_command_line(ray):
                ray.init(address=address, **common)
        except ConnectionError as error:
            raise EdgesegError(f"--ray {address}: no Ray cluster answered ({str(error).splitlines()[0]}). Start one "
                               "(`ray start --head`), check the address, or pass --ray local.") from None
        joined = Joined(address, False, _gcs(ray), alive_nodes(ray))
        log.info("Ray: joined the cluster at %s (%s)", joined.gcs or address, joined.describe())
        return joined
    raise EdgesegError(f"--ray expects local, auto, host:port or ray://host:port, got {address!r}.")


@contextlib.contextmanager
def _utf8_command_line(ray: Any) -> Iterator[None]:
    """Let ``ray.init`` start from a command line that holds bytes that are not UTF-8.

    Ray names the job after this process's command line (``/proc/self/cmdline``) and hands that name
    to its C++ core as UTF-8; a SOURCE named with a byte such as 0xff (Python holds it as a lone
    surrogate) makes ``ray.init`` fail with UnicodeEncodeError before anything runs. The name is only
    shown in Ray's dashboard and job list: Ray gets it with such bytes escaped (``\\udcff``). The paths
    themselves travel as Python strings (pickled) and reach the workers intact. Should Ray name the job
    another way one day, the same failure is one line here instead of a traceback.
    """
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    original = getattr(utils, "get_entrypoint_name", None)
    if callable(original):
        utils.get_entrypoint_name = lambda: original().encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        yield
    except UnicodeEncodeError as error:
        raise EdgesegError(f"Ray cannot start from this command line: it holds bytes that are not UTF-8 "
                           f"({error.object[error.start:error.end]!a}). Rename the file, or name it in a .txt list "
                           "passed as SOURCE (a list's lines reach Ray as data, not as its command line).") from None
    finally:
        if callable(original):
            utils.get_entrypoint_name = original


def _gcs(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - Ray Client has no GCS address to show; the address given is named instead
        return ""


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


@dataclass(frozen=True)
class Need:
    """What one worker asks of a node."""

    cpus: float
    gpus: float = 0.0
    memory_gb: float = 0.0

    def room(self, resources: dict[str, float]) -> int:
        """How many such workers a node with ``resources`` holds."""
        counts = [math.floor(resources.get("CPU", 0.0) / self.cpus + 1e-9)]
        if self.gpus > 0:
            counts.append(math.floor(resources.get("GPU", 0.0) / self.gpus + 1e-9))
        if self.memory_gb > 0:
            counts.append(math.floor(resources.get("memory", 0.0) / (self.memory_gb * GIB) + 1e-9))
        return max(0, min(counts))

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus}
        if self.gpus > 0:
            bundle["GPU"] = self.gpus
        if self.memory_gb > 0:
            bundle["memory"] = self.memory_gb * GIB
        return bundle

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"]
        if self.gpus > 0:
            parts.append(f"{self.gpus:g} GPU")
        if self.memory_gb > 0:
            parts.append(f"{self.memory_gb:g} GiB")
        return " + ".join(parts)


def room(nodes: list[dict[str, Any]], need: Need) -> int:
    """How many workers the nodes hold in total (each on one node)."""
    return sum(need.room(node.get("Resources", {})) for node in nodes)


def describe_nodes(nodes: list[dict[str, Any]]) -> str:
    cpus = sum(node.get("Resources", {}).get("CPU", 0.0) for node in nodes)
    gpus = sum(node.get("Resources", {}).get("GPU", 0.0) for node in nodes)
    memory = sum(node.get("Resources", {}).get("memory", 0.0) for node in nodes) / GIB
    return f"{len(nodes)} node(s): {cpus:g} CPU, {gpus:g} GPU, {memory:.1f} GiB"


def shortfall(nodes: list[dict[str, Any]], need: Need, workers: int, *, autoscale: bool = False) -> str | None:
    """None when ``workers`` fit the nodes, else one line: what is missing and how to fix it."""
    fits = room(nodes, need)
    if fits >= workers:
        return None
    where = describe_nodes(nodes)
    if need.gpus > 0 and not any(node.get("Resources", {}).get("GPU", 0.0) for node in nodes):
        return (f"--gpus-per-worker {need.gpus:g}: this cluster has no GPU ({where}). Drop --gpus-per-worker, "
                "or use a cluster with GPU nodes.")
    limits = []
    tiny = 1e-9  # a worker asking (almost) nothing of a resource: counts what the others allow
    for name, asked, alone in (("CPU", need.cpus, Need(need.cpus)), ("GPU", need.gpus, Need(tiny, need.gpus)),
                               ("memory", need.memory_gb, Need(tiny, 0.0, need.memory_gb))):
        if asked > 0 and room(nodes, alone) < workers:
            limits.append(name)
    named = " and ".join(limits) or "resources on one node"
    hint = "" if autoscale else ", or pass --autoscale if the cluster adds nodes on demand"
    return (f"--workers {workers} with {need.describe()} each do not fit this cluster: it holds {fits} such "
            f"worker(s) ({where}; a worker's {named} must be on one node). Pass --workers {fits or 1} or ask less "
            f"per worker, or add nodes{hint}.")


def check_fit(ray: Any, need: Need, workers: int, *, autoscale: bool, timeout: float,
              stop: threading.Event | None = None) -> list[dict[str, Any]]:
    """Refuse (EdgesegError) a job whose workers cannot fit the cluster; with ``autoscale``, ask for them
    and wait up to ``timeout`` seconds, saying so every 10 s. Returns the nodes it found."""
    nodes = alive_nodes(ray)
    missing = shortfall(nodes, need, workers)
    if missing is None:
        return nodes
    if not autoscale:
        raise EdgesegError(missing)
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[need.bundle()] * workers)
    log.warning("the cluster holds %d of the %d workers now (%s); --autoscale: asked for more nodes, waiting up to "
                "%.0f s", room(nodes, need), workers, describe_nodes(nodes), timeout)
    deadline = time.monotonic() + timeout
    said = time.monotonic()
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt  # Ctrl-C while waiting for nodes: nothing started, nothing to finish
        time.sleep(1.0)
        nodes = alive_nodes(ray)
        if shortfall(nodes, need, workers) is None:
            log.info("the cluster grew to hold the job's workers (%s)", describe_nodes(nodes))
            return nodes
        if time.monotonic() - said >= 10:
            said = time.monotonic()
            log.warning("still waiting for nodes: %d of %d workers fit (%s), %.0f s left", room(nodes, need),
                        workers, describe_nodes(nodes), deadline - time.monotonic())
    missing = shortfall(nodes, need, workers, autoscale=True)
    if missing is None:
        return nodes
    raise EdgesegError(f"no nodes came within --placement-timeout {timeout:g} s: {missing}")
