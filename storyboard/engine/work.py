"""What a stage hands the engine: where to run (``EngineSettings``, from the front door's flags) and
what to run per job (``Work``); and how one job is called in a worker (``call_job``: an exception is
that job's failure, never the run's end). ``storyboard.engine.run`` runs the work. Light: no Ray here.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storyboard.core.cli import UserError

LOCAL = "local"  # --ray-address local: start a Ray on this machine, on 127.0.0.1 only
AUTO = "auto"  # --ray-address auto: the cluster named by RAY_ADDRESS, or the one running here
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps a local instance on 127.0.0.1


@dataclass(frozen=True)
class EngineSettings:
    """The engine flags of a front door (``add_engine_arguments``)."""

    ray_address: str | None = None  # None: in process; local | auto | host:port
    cpus_per_worker: float = 1.0  # CPUs a Ray task or actor reserves
    gpus_per_worker: float | None = None  # GPUs a model actor reserves; None: 1 when the cluster has GPUs
    concurrency: int | None = None  # model actors; None: as many as the cluster's resources allow

    @property
    def on_ray(self) -> bool:
        return self.ray_address is not None

    def check(self) -> EngineSettings:
        if self.ray_address is not None and not self.ray_address.strip():
            raise UserError("--ray-address is empty: give local, auto or host:port")
        if self.cpus_per_worker <= 0:
            raise UserError(f"--cpus-per-worker {self.cpus_per_worker}: needs more than 0")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise UserError(f"--gpus-per-worker {self.gpus_per_worker}: needs 0 or more")
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"--concurrency {self.concurrency}: needs at least 1")
        if not self.on_ray and (self.gpus_per_worker is not None or self.concurrency is not None
                                or self.cpus_per_worker != 1.0):
            raise UserError("--cpus-per-worker, --gpus-per-worker and --concurrency size Ray workers: "
                            "give --ray-address too (local, auto or host:port)")
        return self


def add_engine_arguments(parser: argparse.ArgumentParser, ray_address: str | None = None,
                         models: bool = False) -> None:
    """``--ray-address`` and the worker sizes; ``models``: the stage has model work (actors), so it
    also takes ``--gpus-per-worker`` and ``--concurrency``."""
    group = parser.add_argument_group("past one machine (Ray Data; see docs/scaling.md)")
    group.add_argument("--ray-address", default=ray_address, metavar="ADDRESS",
                       help="run the per-record work on Ray: local (start one here, on 127.0.0.1), auto (the "
                            "cluster in RAY_ADDRESS or the one running here) or host:port; default: in process")
    group.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray task / actor reserves")
    if models:
        group.add_argument("--gpus-per-worker", type=float, default=None,
                           help="GPUs each model actor reserves (default: 1 when the cluster has GPUs, else 0)")
        group.add_argument("--concurrency", type=int, default=None,
                           help="model actors (each loads the model once; default: as many as fit the cluster)")


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The parsed flags as ``EngineSettings``, checked."""
    return EngineSettings(ray_address=args.ray_address, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=getattr(args, "gpus_per_worker", None),
                          concurrency=getattr(args, "concurrency", None)).check()


def _no_failure(job: Any, detail: str) -> Any:
    raise RuntimeError(detail)


@dataclass(frozen=True)
class Work:
    """What a stage runs per job. Give ``function`` (called once per job) or ``model`` (called once per
    worker, returns that function: the model is loaded once). Both must pickle (module-level functions,
    ``functools.partial`` of them, classes) when the work goes to worker processes or to Ray."""

    name: str
    function: Callable[[Any], Any] | None = None
    model: Callable[[], Callable[[Any], Any]] | None = None
    setup: Callable[[], None] | None = None  # once per worker process (thread counts, ...)
    failed: Callable[[Any, str], Any] = _no_failure  # the result for a job that raised or whose worker died
    processes: int = 1  # in process: worker processes for ``function`` work (spawned); 1 = this process
    jobs_per_task: int = 1  # on Ray: jobs a task / actor call takes at once
    records: Callable[[Any], int] | None = None  # records in one job (a batch: ``len``); None: one each

    @property
    def uses_model(self) -> bool:
        return self.model is not None


@dataclass
class Outcome:
    """What a worker sends back for one job: its result, or why it has none."""

    result: Any = None
    error: str | None = None


def call_job(call: Callable[[Any], Any], job: Any) -> Outcome:
    try:
        return Outcome(call(job))
    except Exception as exc:  # one record's failure is that record's reject, never the whole run's end
        return Outcome(error=f"{type(exc).__name__}: {exc}")


_setup_done: set[int] = set()


def run_setup(setup: Callable[[], None] | None) -> None:
    """``setup`` once per process (a worker process runs many jobs)."""
    if setup is not None and id(setup) not in _setup_done:
        setup()
        _setup_done.add(id(setup))
