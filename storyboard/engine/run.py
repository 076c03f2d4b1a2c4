"""Where a stage's per-record work runs: in this process (the default, as before Ray existed here) or
as a Ray Data pipeline on a cluster (``--ray-address``), with the same results either way.

A stage describes its work once (``engine.work.Work``): a picklable function called once per job (CPU
work: a Ray task runs a few jobs), or a picklable factory called once per worker that returns that
function (model work: a Ray actor loads the model once, then takes job after job). ``Engine.map(jobs, work)``
yields one result per job, in the order of ``jobs``, whatever ran them. A job that raises becomes
``work.failed(job, detail)``, so one bad record is rejected with its reason instead of ending the run.

In process: jobs run here, or in ``processes`` spawned worker processes (CPU work); a stage with a
faster loop of its own for this process (the embedding's decode-ahead loader) asks ``Engine.on_ray``
and keeps its loop when the answer is no. On Ray: see
``storyboard.engine.on_ray`` (imported only when ``--ray-address`` is given: this module stays light,
so a front door's ``--help`` and the default path never import Ray).
"""
from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from storyboard.core.cli import UserError
from storyboard.engine.work import LOCAL, LOOPBACK_ENV, EngineSettings, Outcome, Work, call_job


@dataclass
class Engine:
    """Runs ``Work`` in process or on Ray. Use as a context manager: on Ray, entering connects to the
    cluster (or starts the local one) and checks its resources, so a bad address or a missing GPU is a
    one-line error before the stage writes anything; leaving disconnects (and stops a local Ray)."""

    settings: EngineSettings = field(default_factory=EngineSettings)
    needs_gpu: bool = False  # the stage has model work that would use a GPU when there is one
    cluster: Any = None  # on_ray.RayCluster while connected
    records_per_node: Counter = field(default_factory=Counter)

    def __enter__(self) -> Engine:
        if self.settings.on_ray:
            if self.settings.ray_address == LOCAL:
                # Read by Ray when it is imported: keeps the instance it starts on 127.0.0.1.
                os.environ.setdefault(LOOPBACK_ENV, "0")
            from storyboard.engine.on_ray import RayCluster  # noqa: PLC0415 (optional: Ray is imported only when --ray-address is given)

            self.cluster = RayCluster.connect(self.settings, self.needs_gpu)
        return self

    def __exit__(self, *exc) -> bool:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        return False

    @property
    def on_ray(self) -> bool:
        return self.cluster is not None

    def map(self, jobs: Sequence[Any], work: Work) -> Iterator[Any]:
        """One result per job, in the order of ``jobs``."""
        if not jobs:
            return
        if self.cluster is not None:
            for job, (result, node) in zip(jobs, self.cluster.map(jobs, work)):
                if node is not None:
                    self.records_per_node[node] += work.records(job) if work.records else 1
                yield result
            return
        for job, outcome in zip(jobs, self._outcomes_here(jobs, work)):
            yield outcome.result if outcome.error is None else work.failed(job, outcome.error)

    def _outcomes_here(self, jobs: Sequence[Any], work: Work) -> Iterator[Outcome]:
        if work.model is None and work.processes > 1 and len(jobs) > 1:
            yield from _in_processes(jobs, work)
            return
        call = work.model() if work.model is not None else work.function
        for job in jobs:
            yield call_job(call, job)

    def info(self) -> dict[str, Any]:
        """For run.json: which engine ran the work, where, and how many records each node processed."""
        if self.cluster is None and not self.settings.on_ray:
            return {"name": "in-process"}
        info = {"name": "ray", "address": self.settings.ray_address}
        if self.cluster is not None:
            info.update(self.cluster.describe())
        info["records_per_node"] = dict(sorted(self.records_per_node.items()))
        return info


def _in_processes(jobs: Sequence[Any], work: Work) -> Iterator[Outcome]:
    """``work.function`` over ``jobs`` in spawned worker processes, results in job order."""
    ctx = multiprocessing.get_context("spawn")  # no fork after OpenCV / torch threads started
    with ProcessPoolExecutor(max_workers=min(work.processes, len(jobs)), mp_context=ctx,
                             initializer=work.setup) as pool:
        try:
            # Unlike multiprocessing.Pool, a worker that dies (out of memory, a crash in a decoder) is
            # an error here, not a hang.
            yield from pool.map(call_job, [work.function] * len(jobs), jobs, chunksize=1)
        except BrokenProcessPool as exc:
            raise UserError(f"a {work.name} worker process died ({exc}); finished records are kept, and a re-run "
                            "with fewer --workers resumes") from None
