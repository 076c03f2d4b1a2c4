"""The engine tests' Ray cluster: two nodes on this machine, every process on 127.0.0.1, shut down by
the fixture that started it, also when a test fails."""
from __future__ import annotations

import os

import pytest

from engine_helpers import LOOPBACK


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray.cluster_utils.Cluster``: a head and one more node, one CPU each, on loopback only (the
    variable must be set before Ray is imported or started; it is restored afterwards)."""
    saved = {k: os.environ.get(k) for k in (*LOOPBACK, "RAY_ADDRESS")}
    os.environ.update(LOOPBACK)
    os.environ.pop("RAY_ADDRESS", None)
    from ray.cluster_utils import Cluster

    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(num_cpus=1, include_dashboard=False)  # the head
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
