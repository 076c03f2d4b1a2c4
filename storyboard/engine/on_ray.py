"""The engine on Ray Data: join a cluster (or start one on this machine), check that it can run the
work, and stream the jobs through ``map_batches``, results back in job order.

A heavy module (Ray at its top): ``storyboard.engine.run.Engine`` imports it only when ``--ray-address``
is given.

* Connecting. ``local`` starts a Ray here (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray is
  imported, which keeps it on 127.0.0.1); ``auto`` joins the cluster in ``RAY_ADDRESS`` or the one
  running here; ``host:port`` joins that one, after a plain TCP probe of the port, because Ray itself
  waits minutes on an address where nothing answers. The stage's package travels to the workers as a
  ``py_modules`` runtime env (every node runs the driver's code); the libraries must be installed on
  every node and the data folders must be at the same paths (shared storage).
* Resources. A worker size no node can hold, or GPUs asked of a cluster without them, is a one-line
  error before anything is written.
* The pipeline. Jobs go into rows (index, job) as Python objects that Ray Data carries with Ray's own
  serialisation, as it carries any task's arguments (nothing here pickles or unpickles); CPU work
  runs as Ray tasks of ``jobs_per_task`` jobs (``--cpus-per-worker``), model work as an actor pool (``--concurrency``
  actors, ``--gpus-per-worker`` each) whose actors build the model once. Ray Data streams: blocks flow
  through the workers under its backpressure and come back as they finish; nothing is materialised.
  Results come back with the node that made them; the driver puts them in job order.
* Failures. A job that raises is caught in the worker (``run.call_job``) and comes back as an error.
  A worker that dies (a lost node, a crash in a decoder) is retried by Ray up to ``RETRIES`` times,
  elsewhere when its node is gone; a block that still fails is skipped (``max_errored_blocks``) and
  its jobs are tried once more, one job per task, so only the job that kills its worker fails; that one
  becomes ``work.failed(job, why)``.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from storyboard.core.cli import UserError
from storyboard.engine.work import AUTO, LOCAL, EngineSettings, Outcome, Work, call_job, run_setup

RETRIES = 3  # per task / actor, on top of the first try: a lost node's work is redone elsewhere
MAX_BLOCKS = 4096  # input blocks at most (each a Ray object; more only adds scheduling overhead)
PACKAGE = Path(__file__).resolve().parents[1]  # storyboard/: shipped to the workers


def _probe(address: str, timeout: float = 5.0) -> None:
    """A plain TCP connect to ``host:port``: Ray itself would wait minutes where nothing answers."""
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: give local, auto or host:port (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); start "
                        f"one with `ray start --head`, or use --ray-address local") from None


def _node_key(node_id: str) -> str:
    return node_id[:12]


@dataclass(frozen=True)
class _Job:
    """A job in a Ray Data row: a class Arrow cannot take apart, so Ray keeps it a Python object and the
    stage gets back exactly what it gave (a tuple stays a tuple, not an Arrow list)."""

    value: Any


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A column of Python objects (item by item: numpy would turn a list of lists into a 2-D array)."""
    column = np.empty(len(values), dtype=object)
    for k, value in enumerate(values):
        column[k] = value
    return column


def _outcomes_batch(call: Callable[[Any], Any], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    node = _node_key(ray.get_runtime_context().get_node_id())
    outcomes = _objects([call_job(call, job.value) for job in batch["job"]])
    return {"i": batch["i"], "outcome": outcomes, "node": np.full(len(outcomes), node)}


def _task_batch(function: Callable[[Any], Any], setup: Callable[[], None] | None,
                batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    run_setup(setup)
    return _outcomes_batch(function, batch)


class _ModelActor:
    """One Ray actor: builds the model once, then takes job after job."""

    def __init__(self, model: Callable[[], Callable[[Any], Any]], setup: Callable[[], None] | None):
        run_setup(setup)
        self.call = model()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _outcomes_batch(self.call, batch)


def _user_error_in(exc: BaseException) -> UserError | None:
    """A ``UserError`` raised in a worker (a model folder missing on a node, ...), however Ray wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


class RayCluster:
    """A connection to a Ray cluster (started here for ``local``) sized for one stage's work."""

    def __init__(self, settings: EngineSettings, address: str, started_here: bool, gpus_per_worker: float):
        self.settings = settings
        self.address = address
        self.started_here = started_here
        self.gpus_per_worker = gpus_per_worker
        self.nodes = {_node_key(n["NodeID"]): {"ip": n["NodeManagerAddress"],
                                               "cpus": n["Resources"].get("CPU", 0),
                                               "gpus": n["Resources"].get("GPU", 0)}
                      for n in ray.nodes() if n.get("Alive")}

    @classmethod
    def connect(cls, s: EngineSettings, needs_gpu: bool) -> RayCluster:
        address = s.ray_address
        if address == AUTO and os.environ.get("RAY_ADDRESS"):
            address = os.environ["RAY_ADDRESS"]
        if address not in (LOCAL, AUTO):
            _probe(address)
        # The workers import the driver's own storyboard/ (not the demo's and tests' devkit, never needed there).
        options = {"runtime_env": {"py_modules": [str(PACKAGE)], "excludes": ["__pycache__", "*.pyc", "devkit/"]},
                   "logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if address == LOCAL:
                context = ray.init(address="local", include_dashboard=False, **options)
            else:
                context = ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--ray-address {s.ray_address}: cannot join a Ray cluster ({first})") from None
        _quiet_ray_data()
        try:
            gpus = _check_resources(s, needs_gpu)
        except UserError:
            ray.shutdown()
            raise
        info = getattr(context, "address_info", None) or {}
        return cls(s, info.get("gcs_address") or address, address == LOCAL, gpus)

    def close(self) -> None:
        ray.shutdown()

    def describe(self) -> dict[str, Any]:
        return {"cluster": self.address, "started_here": self.started_here, "nodes": self.nodes,
                "cpus_per_worker": self.settings.cpus_per_worker, "gpus_per_worker": self.gpus_per_worker}

    def actors(self) -> int:
        if self.settings.concurrency:
            return self.settings.concurrency
        total = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, math.floor(total.get("GPU", 0) / self.gpus_per_worker))
        return max(1, math.floor(total.get("CPU", 1) / self.settings.cpus_per_worker))

    def map(self, jobs: Sequence[Any], work: Work) -> Iterator[tuple[Any, str | None]]:
        """(result, node) per job, in job order."""
        ready: dict[int, tuple[Outcome, str | None]] = {}
        position = 0
        todo = list(enumerate(jobs))
        for per_task in (work.jobs_per_task, 1):  # the second pass: what a dead worker took with it
            for index, outcome, node in self._run(todo, work, per_task):
                ready[index] = (outcome, node)
                while position in ready:
                    yield self._result(jobs[position], work, *ready.pop(position))
                    position += 1
            todo = [(i, job) for i, job in enumerate(jobs) if i >= position and i not in ready]
            if not todo:
                break
        why = (f"its worker died on each of {RETRIES + 1} tries, twice (a crash in a decoder or a model, "
               "or out of memory)")
        while position < len(jobs):
            outcome, node = ready.pop(position, (Outcome(error=why), None))
            yield self._result(jobs[position], work, outcome, node)
            position += 1

    @staticmethod
    def _result(job: Any, work: Work, outcome: Outcome, node: str | None) -> tuple[Any, str | None]:
        return (outcome.result if outcome.error is None else work.failed(job, outcome.error)), node

    def _run(self, todo: list[tuple[int, Any]], work: Work, per_task: int) -> Iterator[tuple[int, Outcome, str]]:
        rows = [{"i": i, "job": _Job(job)} for i, job in todo]
        blocks = min(MAX_BLOCKS, math.ceil(len(rows) / per_task))
        data = ray.data.from_items(rows, override_num_blocks=blocks)
        common = {"batch_size": per_task, "batch_format": "numpy", "num_cpus": self.settings.cpus_per_worker}
        with warnings.catch_warnings():
            # Ray Data retries forever by default, so a record that kills its worker would hang the run;
            # the retry caps go through ``ray_remote_args``, which Ray 2.60 calls deprecated but offers
            # no other way to set (the project pins Ray 2.60).
            warnings.simplefilter("ignore")
            if work.model is None:
                data = data.map_batches(functools.partial(_task_batch, work.function, work.setup),
                                        max_retries=RETRIES, **common)
            else:
                data = data.map_batches(_ModelActor, fn_constructor_args=(work.model, work.setup),
                                        num_gpus=self.gpus_per_worker or None, concurrency=self.actors(),
                                        max_restarts=RETRIES, max_task_retries=RETRIES, **common)
        try:
            for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
                for i, outcome, node in zip(batch["i"], batch["outcome"], batch["node"]):
                    yield int(i), outcome, str(node)
        except Exception as exc:
            user = _user_error_in(exc)
            if user is not None:
                raise UserError(f"{work.name} on the Ray workers: {user}") from None
            raise


def _quiet_ray_data() -> None:
    """Our progress bar and summary table speak for the run; Ray Data's own bars and per-run logs would
    bury them. Blocks lost for good are skipped here and their jobs retried (see the module doc)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.max_errored_blocks = -1
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _check_resources(s: EngineSettings, needs_gpu: bool) -> float:
    """The GPUs each model actor reserves; ``UserError`` when no node can hold a worker."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    where = f"the Ray cluster at {s.ray_address}"
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    if s.cpus_per_worker > most_cpus:
        raise UserError(f"--cpus-per-worker {s.cpus_per_worker:g}: no node of {where} has that many CPUs "
                        f"(the most is {most_cpus:g})")
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    gpus = s.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if needs_gpu and most_gpus >= 1 else 0.0
    if gpus > 0 and most_gpus == 0:
        raise UserError(f"--gpus-per-worker {gpus:g}: {where} has no GPU (its nodes offer "
                        f"{sum(r.get('CPU', 0) for r in nodes):g} CPUs and no GPU)")
    if gpus > most_gpus:
        raise UserError(f"--gpus-per-worker {gpus:g}: no node of {where} has that many GPUs "
                        f"(the most is {most_gpus:g})")
    return gpus
