"""The engine without a cluster: jobs keep their order, a failing job becomes that job's failure (not
the run's end), the flags are checked, the default path never imports Ray, and an address where no
Ray answers is one line before anything is written."""
from __future__ import annotations

import functools
import operator
import subprocess
import sys

import pytest

from storyboard.core.cli import UserError
from storyboard.engine.run import Engine
from storyboard.engine.work import EngineSettings, Work

from engine_helpers import FINALIZE, free_port, ray_env, write_finalize_input
from support import REPO, assert_one_line_error, run_front_door


def _failed(job, detail):
    return ("failed", job, detail)


@pytest.mark.parametrize("processes", [1, 2])
def test_results_come_in_job_order_and_a_failing_job_is_only_that_job(processes):
    work = Work("divide", function=functools.partial(operator.truediv, 12.0), failed=_failed, processes=processes)
    with Engine() as engine:
        results = list(engine.map([1, 2, 0, 4, 3, 6], work))
        assert not engine.on_ray
    assert results[:2] == [12.0, 6.0] and results[3:] == [3.0, 4.0, 2.0]
    assert results[2][:2] == ("failed", 0) and "ZeroDivisionError" in results[2][2]
    assert engine.info() == {"name": "in-process"}


def test_model_work_builds_its_model_once_in_process():
    built = []

    def model():
        built.append(1)
        return lambda job: job * 2

    with Engine() as engine:
        assert list(engine.map([1, 2, 3], Work("double", model=model))) == [2, 4, 6]
    assert built == [1]


def test_worker_sizes_need_an_address_and_sane_values():
    with pytest.raises(UserError, match="give --ray-address too"):
        EngineSettings(cpus_per_worker=2).check()
    with pytest.raises(UserError, match="--concurrency 0"):
        EngineSettings(ray_address="local", concurrency=0).check()
    with pytest.raises(UserError, match="--gpus-per-worker -1"):
        EngineSettings(ray_address="local", gpus_per_worker=-1).check()
    with pytest.raises(UserError, match="empty"):
        EngineSettings(ray_address=" ").check()
    assert EngineSettings(ray_address="10.0.0.5:6379", cpus_per_worker=0.5).check().on_ray


_CONNECT_PROBE = """
import os, sys, types
from storyboard.engine.run import Engine
from storyboard.engine.work import EngineSettings

class Stub:  # stands in for on_ray.RayCluster: reports what Ray would see when it starts
    @classmethod
    def connect(cls, settings, needs_gpu):
        print(os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), "ray" in sys.modules)
        raise SystemExit(0)

sys.modules["storyboard.engine.on_ray"] = types.SimpleNamespace(RayCluster=Stub)
Engine(EngineSettings(ray_address=sys.argv[1])).__enter__()
"""


@pytest.mark.parametrize(("address", "expected"), [("local", "0 False"), ("10.0.0.5:6379", "None False")])
def test_local_sets_the_loopback_variable_before_ray_is_imported(address, expected):
    """``--ray-address local`` keeps Ray on 127.0.0.1 by setting RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray
    is imported (Ray reads it once, at import); a real cluster's address leaves it alone (the driver must
    announce its outward address there). Checked with a stub, so no Ray starts."""
    env = ray_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    proc = subprocess.run([sys.executable, "-c", _CONNECT_PROBE, address], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_the_default_path_never_imports_ray(sample_data, tmp_path):
    """Without --ray-address a whole 03 run happens without Ray in the process (the negative control:
    the same probe sees Ray once it is imported)."""
    write_finalize_input(sample_data, tmp_path / "meta.jsonl", limit=2)
    probe = ("import sys\nfrom storyboard.images.finalize import FinalizeSettings, finalize_dataset\n"
             f"finalize_dataset({str(tmp_path / 'meta.jsonl')!r}, {str(sample_data / 'images')!r}, "
             f"{str(tmp_path / 'out')!r}, FinalizeSettings(size=64))\n"
             "print('before', 'ray' in sys.modules)\n"
             "import storyboard.engine.on_ray\nprint('after', 'ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=ray_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["before", "False", "after", "True"]
    assert (tmp_path / "out" / "metadata.jsonl").is_file()


def test_an_address_where_no_ray_answers_is_one_line_and_writes_nothing(sample_data, tmp_path):
    write_finalize_input(sample_data, tmp_path / "meta.jsonl", limit=2)
    out = tmp_path / "Dataset_fin"
    proc = run_front_door(FINALIZE, "--image-root", sample_data / "images", "--metadata", tmp_path / "meta.jsonl",
                          "--out", out, "--ray-address", f"127.0.0.1:{free_port()}", cwd=tmp_path, env=ray_env(),
                          timeout=120)
    assert_one_line_error(proc, "--ray-address 127.0.0.1:", "no Ray cluster answers there")
    assert not out.exists()
    proc = run_front_door(FINALIZE, "--image-root", sample_data / "images", "--metadata", tmp_path / "meta.jsonl",
                          "--out", out, "--cpus-per-worker", "2", cwd=tmp_path, env=ray_env())
    assert_one_line_error(proc, "give --ray-address too")
    assert not out.exists()
