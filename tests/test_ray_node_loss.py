"""A two-node Ray cluster loses its worker node mid-run: the lost chain is started again on the node left,
resumes from its finished generations and the run ends with the uninterrupted run's numbers; a task that keeps
losing its worker stops the run after a bounded number of retries with the one-line error; notes raised in
Ray workers reach the driver as notes."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster

from imgsynth.distributed.backend import ray_session
from imgsynth.distributed.tasks import Task, run_tasks
from imgsynth.errors import TaskFailedError
from imgsynth.experiments.config import recipe_from_dict
from imgsynth.experiments.loop import Experiment
from imgsynth.experiments.modes import LOOP_MODES, LoopMode, ModeInputs
from imgsynth.notes import Note
from imgsynth.reports.tables import collect_metrics

# Ray workers cannot import this file by name: its functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODE = "replace_stalling"
RECIPE = {
    "name": "tiny", "seed": 0,
    "data": {"source": "gaussian:classes=2,per_class=30,mean=128,sigma=20,spacing=40,seed=0", "size": 4,
             "mode": "L", "test_fraction": 0.2},
    "generator": {"kind": "gaussian", "per_class": 10},
    "loop": {"generations": 3, "modes": [MODE], "seeds": 2},
    "metrics": {"extractors": ["pixels"], "per_class": False},
    "classifier": {"enabled": False},
}


def stall_on_victim(victim: str, signal: Path):
    """``replace``, except on the victim node, where it says so (a file) and waits to be killed with its node
    (and exits without writing, should it outlive it); on the head node it waits until the victim stalled, so
    the head is busy and the other chain has to go to the victim. Deterministic in what it returns."""

    def build(inputs: ModeInputs):
        if ray.is_initialized() and inputs.generation == 1:
            if ray.get_runtime_context().get_node_id() == victim:
                signal.touch()
                time.sleep(60)
                os._exit(1)
            deadline = time.monotonic() + 60
            while not signal.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return LOOP_MODES["replace"].build(inputs)

    return build


def _doomed(marker: Path) -> None:
    """A task whose worker dies every time it runs (counting its attempts)."""
    with open(marker, "a") as attempts:
        attempts.write("x")
    os._exit(1)


@pytest.mark.ray
@pytest.mark.slow
def test_losing_a_node_mid_run_retries_its_chain_and_gives_the_uninterrupted_numbers(tmp_path, capfd):
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    victim = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        signal = tmp_path / "victim-stalled"
        with LOOP_MODES.registered(MODE, LoopMode(stall_on_victim(victim.node_id, signal))):
            experiment = Experiment(recipe_from_dict(RECIPE), tmp_path / "cluster" / "run", progress=False,
                                    backend="ray", address=cluster.address, workers=2)

            def kill_the_victim() -> None:
                deadline = time.monotonic() + 120
                while not signal.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                cluster.remove_node(victim, allow_graceful=False)

            killer = threading.Thread(target=kill_the_victim)
            killer.start()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                experiment.run()
            killer.join()
            assert signal.exists(), "no chain ran on the worker node"
            notes = [str(w.message) for w in caught if issubclass(w.category, Note)]
            assert any("was lost" in n and "retry 1 of 2" in n for n in notes), notes
            assert any("fewer samples than feature dimensions" in n for n in notes)  # raised in a Ray worker
            out, err = capfd.readouterr()
            assert "Raylet is terminated" not in out + err  # Ray's own messages stay out of the terminal
            reference = Experiment(recipe_from_dict(RECIPE), tmp_path / "home" / "run", progress=False).run()
            # metrics.csv's rows, exactly (read while the run folders' registered mode is known)
            pd.testing.assert_frame_equal(collect_metrics(experiment.run_dir), collect_metrics(reference),
                                          check_exact=True)

        # A task that loses its worker every time: bounded retries, then today's one-line error.
        marker = tmp_path / "attempts"
        with warnings.catch_warnings(record=True), \
                pytest.raises(TaskFailedError, match=r"^doomed: its Ray worker died \(\w+\); finished work is kept"):
            run_tasks([Task("doomed", _doomed, (marker,))], backend="ray", address=cluster.address, workers=1,
                      retries=2)
        assert marker.read_text() == "xxx"
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
def test_without_an_address_a_command_starts_its_own_instance_even_beside_a_running_cluster(monkeypatch):
    """Ray's ``ray.init()`` joins the cluster last started on the machine; imgsynth's help promises a local
    instance of its own (and ``num_cpus``, which joining refuses), unless ``RAY_ADDRESS`` names a cluster."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        with ray_session(num_cpus=2) as session:
            assert session.get_runtime_context().gcs_address != cluster.address
            assert session.cluster_resources()["CPU"] == 2
        assert not ray.is_initialized()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        with ray_session() as session:
            assert session.get_runtime_context().gcs_address == cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
