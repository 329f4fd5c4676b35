"""The Ray executor on a real local Ray instance: the same bytes as in-process, one task per unit."""

from __future__ import annotations

from pathlib import Path

import pytest

from samkit.experiments import get
from samkit.experiments.executors import InlineExecutor, RayExecutor
from samkit.experiments.runner import run_experiment

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _data(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / "data").glob("*.csv"))}


@pytest.mark.parametrize("name", ["E1", "E7"])
def test_ray_gives_the_same_bytes_as_in_process(local_ray, name, tmp_path):
    exp = get(name)
    run_experiment(exp, "tiny", tmp_path / "inline", progress=False, executor=InlineExecutor())
    executor = RayExecutor()  # uses the instance the test started
    assert not executor._started
    res = run_experiment(exp, "tiny", tmp_path / "ray", progress=False, executor=executor)
    executor.close()
    assert local_ray.is_initialized()  # an instance the executor did not start is left running
    a, b = _data(tmp_path / "inline" / name), _data(tmp_path / "ray" / name)
    assert a and a == b
    assert res["run"]["units_cached"] == 0 and res["run"]["units"] == len(exp.units(exp.config("tiny")))
