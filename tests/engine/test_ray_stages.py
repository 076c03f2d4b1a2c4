"""The three per-record stages on Ray give the files they give in process: 03 through ``--ray-address
local``, and 03, line art (tasks and model actors) and the clustering embedding (CLIP actors) over a
two-node cluster on 127.0.0.1 (``conftest.ray_cluster``). A node lost mid-run and a driver killed
mid-run lose nothing; a job that raises or kills its worker is that job's failure; a cluster that cannot
hold the workers asked for is one line before anything is written.

Every Ray process here binds and connects to 127.0.0.1 only; each cluster is shut down by the fixture
(or the front door) that started it, also when a test fails. Ray takes ~10 s to start on two busy cores,
so the tests are few, the data small, and the in-process reference runs share one 03 output."""
from __future__ import annotations

import functools
import operator
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from storyboard.core.cli import UserError
from storyboard.core.records import load_jsonl
from storyboard.engine.run import Engine
from storyboard.engine.work import EngineSettings, Work

from engine_helpers import (
    CLUSTERING,
    FINALIZE,
    LINEART,
    folder_bytes,
    ray_env,
    run_info,
    write_finalize_input,
)
from support import assert_one_line_error, run_front_door

SMALL = ("--size", "256", "--small-size", "64")  # 64 px small copies: the tiny CLIP's input size


def _finalize_args(sample_data: Path, meta: Path, out: Path) -> list:
    return ["--image-root", sample_data / "images", "--metadata", meta, "--out", out, *SMALL]


def _ray_records(run: dict) -> dict[str, int]:
    """records_per_node of a run.json, after checking that Ray ran it on loopback nodes only."""
    engine = run["config"]["engine"]
    assert engine["name"] == "ray"
    assert {node["ip"] for node in engine["nodes"].values()} == {"127.0.0.1"}, engine["nodes"]
    return engine["records_per_node"]


def _in_process(script: Path, *args, cwd: Path) -> None:
    """A front door's ``main`` in this process: the in-process reference run, without a new interpreter
    importing torch again. The Ray runs go through the front door as a user runs it."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        assert runpy.run_path(str(script), run_name="reference")["main"]([str(a) for a in args]) == 0
    finally:
        os.chdir(here)


@dataclass
class Finalized:
    meta: Path
    folder: Path  # 03 run in process over the whole sample set
    reached: int  # records that reach the workers (the rest are rejected while planning)


@pytest.fixture(scope="module")
def finalized(sample_data, tmp_path_factory) -> Finalized:
    root = tmp_path_factory.mktemp("engine_finalized")
    reached = write_finalize_input(sample_data, root / "meta.jsonl")
    _in_process(FINALIZE, *_finalize_args(sample_data, root / "meta.jsonl", root / "Dataset_fin"), "--workers", 1,
                cwd=root)
    return Finalized(root / "meta.jsonl", root / "Dataset_fin", reached)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny CLIP and line-art annotators (only those: the engine tests need no others)."""
    from storyboard.devkit.tiny import build_all

    out = tmp_path_factory.mktemp("engine_tiny")
    build_all(out, seed=0, only=["clip", "annotators"])
    return out


# --------------------------------------------------------------------------------------------
# A Ray started by the front door itself (before the module's cluster exists)
# --------------------------------------------------------------------------------------------
def test_03_with_ray_address_local_makes_the_same_folder_on_loopback(finalized, sample_data, tmp_path):
    # The engine sets the loopback variable itself for `local` (test_engine checks that without starting
    # Ray); it is in the environment here too, so that no test can ever start Ray on another address.
    ray_out = tmp_path / "on_ray"
    proc = run_front_door(FINALIZE, *_finalize_args(sample_data, finalized.meta, ray_out), "--ray-address", "local",
                          cwd=tmp_path, env=ray_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert folder_bytes(ray_out) == folder_bytes(finalized.folder)
    assert len(list((ray_out / "small").glob("*.png"))) == finalized.reached - 1  # each square has its copy
    run = run_info(ray_out / "run.json")
    assert sum(_ray_records(run).values()) == finalized.reached
    assert run["config"]["engine"]["started_here"] is True
    assert run_info(finalized.folder / "run.json")["config"]["engine"] == {"name": "in-process"}


# --------------------------------------------------------------------------------------------
# Over the module's two-node cluster
# --------------------------------------------------------------------------------------------
def test_03_over_two_nodes_makes_the_same_folder(ray_cluster, finalized, sample_data, tmp_path):
    ray_out = tmp_path / "on_ray"
    proc = run_front_door(FINALIZE, *_finalize_args(sample_data, finalized.meta, ray_out), "--ray-address",
                          ray_cluster.address, cwd=tmp_path, env=ray_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert folder_bytes(ray_out) == folder_bytes(finalized.folder)
    per_node = _ray_records(run_info(ray_out / "run.json"))
    assert len(per_node) == 2 and sum(per_node.values()) == finalized.reached, per_node


def test_line_art_tasks_and_model_actors_match_in_process(ray_cluster, finalized, tiny, tmp_path):
    model = ("--annotators", tiny / "annotators", "--size", "64", "--detect-resolution", "64", "--batch-size", "4")
    for backend, extra in (("xdog", ()), ("lineart", model)):
        here, on_ray = tmp_path / f"{backend}-here", tmp_path / f"{backend}-ray"
        shutil.copytree(finalized.folder, here)
        shutil.copytree(finalized.folder, on_ray)
        _in_process(LINEART, "--data-dir", here, "--backend", backend, *extra, "--workers", 1, cwd=tmp_path)
        # auto: the cluster named by RAY_ADDRESS
        proc = run_front_door(LINEART, "--data-dir", on_ray, "--backend", backend, *extra, "--ray-address", "auto",
                              cwd=tmp_path, env=ray_env(RAY_ADDRESS=ray_cluster.address), timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert folder_bytes(on_ray) == folder_bytes(here), backend
        per_node = _ray_records(run_info(on_ray / "lineart" / "run.json"))
        assert sum(per_node.values()) == finalized.reached - 1, per_node
        assert load_jsonl(on_ray / "metadata.jsonl")[0]["lineart_backend"] == backend

    # GPUs asked of a cluster without any: one line, nothing written.
    before = folder_bytes(on_ray)
    proc = run_front_door(LINEART, "--data-dir", on_ray, "--backend", "lineart", *model, "--ray-address",
                          ray_cluster.address, "--gpus-per-worker", "1", "--out-dir", "lineart_gpu", cwd=tmp_path,
                          env=ray_env(), timeout=300)
    assert_one_line_error(proc, "--gpus-per-worker 1", "has no GPU")
    assert folder_bytes(on_ray) == before and not (on_ray / "lineart_gpu").exists()


def test_clustering_embeds_with_clip_actors_and_writes_the_same_set(ray_cluster, finalized, tiny, tmp_path):
    common = ["--clip-model", f"local-dir:{tiny / 'clip'}", "--dedupe-threshold", "0.9995", "--no-estimate",
              "--naming", "labels"]
    here, on_ray = tmp_path / "here", tmp_path / "ray"
    for root in (here, on_ray):
        shutil.copytree(finalized.folder, root / "Dataset_fin")
    _in_process(CLUSTERING, *common, cwd=here)
    proc = run_front_door(CLUSTERING, *common, "--ray-address", ray_cluster.address, cwd=on_ray, env=ray_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("metadata.jsonl", "clustering.rejects.jsonl", "metadata_prebalance.jsonl"):
        assert (on_ray / "Dataset_fin" / name).read_bytes() == (here / "Dataset_fin" / name).read_bytes(), name
    run = run_info(on_ray / "Dataset_fin" / "clustering.run.json")
    assert sum(_ray_records(run).values()) == run["summary"]["extra"]["embedded now"] > 0


def test_a_failing_job_and_a_dying_worker_fail_only_their_job(ray_cluster):
    settings = EngineSettings(ray_address=ray_cluster.address)
    failed = lambda job, detail: ("failed", job, detail)
    with Engine(settings) as engine:
        divided = list(engine.map([1, 2, 0, 4], Work("divide", function=functools.partial(operator.truediv, 8.0),
                                                         failed=failed)))
        # A job that kills its worker process: Ray retries it, then the engine gives up on that job alone.
        dying = Work("exit", function=lambda job: os._exit(3) if job == 2 else job * 10, failed=failed)
        survived = list(engine.map([1, 2, 3], dying))
        info = engine.info()
    assert divided[:2] == [8.0, 4.0] and divided[3] == 2.0 and "ZeroDivisionError" in divided[2][2]
    assert survived[0] == 10 and survived[2] == 30 and survived[1][:2] == ("failed", 2)
    assert "died" in survived[1][2]
    assert info["address"] == ray_cluster.address and len(info["nodes"]) == 2
    with pytest.raises(UserError, match="no node of .* has that many CPUs"), \
            Engine(EngineSettings(ray_address=ray_cluster.address, cpus_per_worker=4)):
        pass


def _start_and_wait(cmd: list, cwd: Path, state: Path, count: int) -> subprocess.Popen:
    """Start a front door and return once ``count`` records are finished (it is then mid-run)."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(state.glob("*.json"))) < count:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    return proc


def test_a_lost_node_and_a_killed_driver_lose_nothing(ray_cluster, finalized, sample_data, tmp_path):
    """A third node is removed while 03 runs on it: Ray redoes its work on the two others, and the
    folder equals the in-process one. Then a driver killed with SIGKILL mid-run: the re-run reuses what
    was finished and ends with the same folder."""
    extra = ray_cluster.add_node(num_cpus=1)
    lost = tmp_path / "lost"
    cmd = [sys.executable, FINALIZE, *_finalize_args(sample_data, finalized.meta, lost), "--ray-address",
           ray_cluster.address]
    proc = _start_and_wait(cmd, tmp_path, lost / ".state", count=3)
    ray_cluster.remove_node(extra)
    _, stderr = proc.communicate(timeout=600)
    if proc.returncode != 0:  # the issue allows the run to stop, as long as a re-run finishes it
        rerun = run_front_door(*cmd[1:], cwd=tmp_path, env=ray_env(), timeout=600)
        assert rerun.returncode == 0, rerun.stderr
    assert folder_bytes(lost) == folder_bytes(finalized.folder), stderr
    assert sum(_ray_records(run_info(lost / "run.json")).values()) == finalized.reached

    killed = tmp_path / "killed"
    cmd = [sys.executable, FINALIZE, *_finalize_args(sample_data, finalized.meta, killed), "--ray-address",
           ray_cluster.address]
    proc = _start_and_wait(cmd, tmp_path, killed / ".state", count=3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (killed / "metadata.jsonl").exists()
    rerun = run_front_door(*cmd[1:], cwd=tmp_path, env=ray_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert folder_bytes(killed) == folder_bytes(finalized.folder)
    assert run_info(killed / "run.json")["summary"]["extra"]["images reused (resume)"] >= 3
