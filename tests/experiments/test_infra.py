"""The experiment infrastructure: configs and overrides, caching and resume, atomic writes, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samkit.experiments import (
    Claim,
    ConfigError,
    Experiment,
    Figure,
    Param,
    Unit,
    apply_overrides,
    get,
    names,
    register,
)
from samkit.experiments.plotting import new_figure, save_figure
from samkit.experiments.runner import ensure_writable, read_json, run_experiment, write_csv
from samkit.report import write_report


class Toy(Experiment):
    name = "TOY"
    title = "Toy"
    summary = "Squares numbers."
    presets = {
        "tiny": {"seed": 0, "xs": [1.0, 2.0, 3.0], "bound": 10.0, "label": "a", "fast": True},
        "quick": {"seed": 0, "xs": [1.0, 2.0, 3.0, 4.0], "bound": 10.0, "label": "a", "fast": True},
        "full": {"seed": 0, "xs": [1.0, 2.0, 3.0, 4.0, 5.0], "bound": 30.0, "label": "a", "fast": False},
    }
    schema = {
        "seed": Param(int, "seed", min=0),
        "xs": Param(list[float], "numbers to square"),
        "bound": Param(float, "upper bound of the squares", min=0, strict=True),
        "label": Param(str, "a label"),
        "fast": Param(bool, "a flag"),
    }
    calls: list[float] = []

    def units(self, config):
        return [Unit(f"x{x:g}", {"x": x, "seed": config["seed"]}) for x in config["xs"]]

    def run_unit(self, params):
        Toy.calls.append(params["x"])
        return {"y": params["x"] ** 2, "series": [params["x"] * t for t in range(3)]}

    def tables(self, config, results):
        rows = [{"x": float(k[1:]), "y": r["y"]} for k, r in results.items()]
        return {"squares": rows}

    def claims(self, config, data):
        ys = data["squares"].col("y")
        return [
            Claim(
                id="TOY.1",
                statement="squares stay below the bound",
                setting=f"xs={config['xs']}",
                prediction=f"max y < {config['bound']}",
                measured=f"max y = {ys.max()}",
                tolerance="none",
                passed=bool(ys.max() < config["bound"]),
                figure="squares.png",
            )
        ]

    def figures(self, config, data, fig_dir):
        fig, ax = new_figure()
        ax[0, 0].plot(data["squares"].col("x"), data["squares"].col("y"), "o", label="y")
        ax[0, 0].set_xlabel("x")
        ax[0, 0].legend()
        save_figure(fig, fig_dir / "squares.png")
        return [Figure("squares.png", "Squares", "y against x.", ["TOY.1"], ["data/squares.csv"])]


register(Toy)


def test_registry_lists_builtins_and_registered():
    assert names()[:6] == ["E1", "E2", "E3", "E4", "E5", "E6"]
    assert "TOY" in names()
    assert isinstance(get("toy"), Toy)
    with pytest.raises(ConfigError, match="unknown experiment"):
        get("E99")


def test_register_rejects_inconsistent_presets():
    class Bad(Toy):
        name = "BAD"
        presets = {"tiny": {"a": 1}, "quick": {"a": 1}, "full": {"b": 1}}

    with pytest.raises(ValueError, match="keys differ"):
        register(Bad)


def test_overrides_are_typed():
    cfg = Toy.presets["quick"]
    out = apply_overrides(cfg, ["xs=[1, 2.5]", "bound=3", "label=b", "fast=false", "seed=4"])
    assert out == {"seed": 4, "xs": [1.0, 2.5], "bound": 3.0, "label": "b", "fast": False}
    assert cfg["seed"] == 0  # not mutated
    for bad, msg in [
        ("nope=1", "unknown config key"),
        ("seed=1.5", "expected an integer"),
        ("bound=abc", "expected a number"),
        ("fast=maybe", "true or false"),
        ("xs=1,x", "expected a number"),
        ("seed", "key=value"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            apply_overrides(cfg, [bad])
    # the experiment's config() adds the schema's checks to the parser's
    assert Toy().config("quick", ["bound=3"])["bound"] == 3.0
    with pytest.raises(ConfigError, match=r"^TOY: bound must be a positive finite number, got -3.0$"):
        Toy().config("quick", ["bound=-3"])


def test_run_writes_results_with_provenance(tmp_path: Path):
    res = run_experiment(Toy(), "quick", tmp_path, progress=False)
    assert [c.verdict for c in res.claims] == ["FAIL"]  # 16 > 10
    d = tmp_path / "TOY"
    assert (d / "data" / "squares.csv").exists() and (d / "figures" / "squares.png").exists()
    stored = read_json(d / "result.json")
    prov = stored["provenance"]
    assert prov["samkit"] and prov["torch"] and prov["seed"] == 0 and prov["config"]["xs"] == [1.0, 2.0, 3.0, 4.0]
    assert "git_commit" in prov
    unit_files = list((d / "units").glob("*.json"))
    assert len(unit_files) == 4
    assert read_json(unit_files[0])["provenance"]["config_hash"] == stored["config_hash"]
    assert not list(d.rglob(".*.tmp"))  # no temporary files left behind


def test_interrupted_run_resumes_to_identical_results(tmp_path: Path):
    Toy.calls.clear()

    class Killed(Exception):
        pass

    def kill_after_two(key, cached):
        if len(Toy.calls) == 2:
            raise Killed

    with pytest.raises(Killed):
        run_experiment(Toy(), "quick", tmp_path / "a", progress=False, on_unit=kill_after_two)
    assert Toy.calls == [1.0, 2.0]
    seen = []
    res = run_experiment(Toy(), "quick", tmp_path / "a", progress=False, on_unit=lambda k, c: seen.append((k, c)))
    assert seen == [("x1", True), ("x2", True), ("x3", False), ("x4", False)]
    assert Toy.calls == [1.0, 2.0, 3.0, 4.0]
    clean = run_experiment(Toy(), "quick", tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "TOY" / "data" / "squares.csv").read_text()
    assert a == (tmp_path / "b" / "TOY" / "data" / "squares.csv").read_text()
    assert res["claims"] == clean["claims"]
    # a changed config reuses the overlapping units only
    Toy.calls.clear()
    run_experiment(Toy(), "quick", tmp_path / "a", ["xs=1,7"], progress=False)
    assert Toy.calls == [7.0]


def test_report_lists_claims_first_and_links_data(tmp_path: Path):
    run_experiment(Toy(), "tiny", tmp_path, progress=False)
    paths = write_report(tmp_path)
    md = (tmp_path / "README.md").read_text()
    assert md.index("## Claims") < md.index("![Squares]")
    assert "TOY/data/squares.csv" in md and "| TOY.1 |" in md and "**PASS**" in md
    html = (tmp_path / "index.html").read_text()
    assert "TOY/figures/squares.png" in html and "class='PASS'" in html
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert claims["all_pass"] and claims["claims"][0]["verdict"] == "PASS"
    assert len(paths) == 3


def test_unwritable_out_dir_is_a_config_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        ensure_writable(blocker / "sub")


def test_csv_round_trip_keeps_floats_exact(tmp_path: Path):
    from samkit.experiments.base import read_table

    rows = [{"a": 0.1 + 0.2, "b": "sam", "c": 3, "d": True, "e": float("inf")}]
    write_csv(tmp_path / "t.csv", rows)
    back = read_table(tmp_path / "t.csv").rows[0]
    assert back == rows[0]
