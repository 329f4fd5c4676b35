"""The ``samkit`` command line: commands, one-line errors with exit code 2, resume, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from samkit.cli import main
from samkit.experiments import Claim, Experiment, Figure, Unit, register
from samkit.experiments.plotting import new_figure, save_figure


class CliToy(Experiment):
    name = "CLITOY"
    title = "CLI toy"
    summary = "Adds numbers."
    presets = {p: {"seed": 0, "n": n, "scale": 1.0} for p, n in (("tiny", 2), ("quick", 3), ("full", 4))}

    def units(self, config):
        return [Unit(f"u{i}", {"i": i, "scale": config["scale"]}) for i in range(config["n"])]

    def run_unit(self, params):
        return {"v": params["i"] * params["scale"]}

    def tables(self, config, results):
        return {"values": [{"unit": k, "v": r["v"]} for k, r in results.items()]}

    def claims(self, config, data):
        v = data["values"].col("v")
        return [Claim("CT.1", "values are non-negative", "-", "min v >= 0", f"min v = {v.min()}", "-", v.min() >= 0)]

    def figures(self, config, data, fig_dir):
        fig, ax = new_figure()
        ax[0, 0].plot(data["values"].col("v"))
        save_figure(fig, fig_dir / "v.png")
        return [Figure("v.png", "Values", "The values.", ["CT.1"], ["data/values.csv"])]


register(CliToy)


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "CLITOY" in out and "E1" in out


def test_run_then_report(tmp_path: Path, capsys):
    assert main(["run", "clitoy", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1/1 claims PASS" in out and "0 cached" in out
    assert main(["run", "CLITOY", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 cached" in out and "(0.0 s of compute)" in out  # everything came from the cache
    (tmp_path / "CLITOY" / "figures" / "v.png").unlink()
    assert main(["report", str(tmp_path)]) == 0  # redraws from the saved CSV
    assert (tmp_path / "CLITOY" / "figures" / "v.png").exists()
    assert json.loads((tmp_path / "claims.json").read_text())["all_pass"]


def test_failing_claim_exits_1(tmp_path: Path, capsys):
    code = main(["run", "CLITOY", "--preset", "tiny", "--out", str(tmp_path), "--set", "scale=-1", "--no-progress"])
    assert code == 1
    assert "[FAIL] CT.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["run", "E99"], "unknown experiment 'E99'"),
        (["run", "CLITOY", "--set", "nope=1"], "unknown config key 'nope'"),
        (["run", "CLITOY", "--set", "n=two"], "n: expected an integer"),
        (["run", "CLITOY", "--preset", "huge"], "invalid choice: 'huge'"),
        (["report", "/nonexistent/dir"], "no such results directory"),
        (["frobnicate"], "invalid choice"),
        (["run"], "required"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, msg, tmp_path: Path, capsys):
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("samkit: error: ") and msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_out_dir(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "CLITOY", "--preset", "tiny", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and err.count("\n") == 1


def test_console_script_error_exit_code(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "samkit.cli", "run", "E99", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("samkit: error: unknown experiment") and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------ issue 14
def test_version(capsys):
    import samkit

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"samkit {samkit.__version__}"


def test_list_exp_shows_every_key_with_type_presets_and_range(capsys):
    from samkit.experiments import get

    assert main(["list", "e3"]) == 0
    out = capsys.readouterr().out
    exp = get("E3")
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip() and not line.startswith("also")}
    assert set(exp.schema) <= set(lines)
    for key, param in exp.schema.items():
        assert param.type_name() in lines[key] and param.allowed() in lines[key] and param.help in lines[key]
    assert "tiny" in out.splitlines()[1] and "full" in out.splitlines()[1]
    assert main(["list"]) == 0 and "`samkit list EXP`" in capsys.readouterr().out
    assert main(["list", "E99"]) == 2 and "unknown experiment 'E99'" in capsys.readouterr().err


def test_report_defaults_to_results_like_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "CLITOY", "--preset", "tiny", "--no-progress"]) == 0
    (tmp_path / "results" / "index.html").unlink()
    assert main(["report"]) == 0
    assert (tmp_path / "results" / "index.html").exists()


def _actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {n}", a, s) for n, a, s in _actions(sub))
        else:
            yield "", action, parser


def test_help_shows_every_default_and_the_exit_codes(capsys):
    from samkit.cli import build_parser

    parser = build_parser()
    checked = 0
    for where, action, owner in _actions(parser):
        if action.default in (None, False, [], "==SUPPRESS==") or action.nargs == 0:
            continue  # no default to show, or an on/off switch
        text = owner._get_formatter()._format_action(action)
        assert "default" in " ".join(text.split()), (where, action.dest, text)
        checked += 1
    assert checked > 40  # run, reproduce, report, train, sweep
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "130" in out and "3    a runtime failure" in out
    assert main(["train", "--help"]) == 0
    assert "asam" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, prefix",
    [
        (["run", "CLITOY", "--jobs", "x"], "samkit: error: argument --jobs"),
        (["report", "a", "b"], "samkit: error: unrecognized arguments: b"),
        (["sweep", "--rho", "0.1,0.2"], "samkit: error: the following arguments are required: --out"),
        (["list", "E1", "E2"], "samkit: error: unrecognized arguments: E2"),
        (["train", "--epochs", "two"], "samkit train: error: argument --epochs"),
    ],
)
def test_every_usage_error_has_the_command_prefix(argv, prefix, capsys):
    assert main(argv) == 2  # before: `samkit run: error:`, `samkit report: error:` ... and SystemExit from main()
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1


def test_a_preset_only_one_experiment_has_is_a_choice_of_run_not_of_reproduce(tmp_path, capsys):
    assert main(["run", "E1", "--preset", "medium", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'medium' for E1 (choose from tiny, quick, full)" in err
    assert main(["reproduce", "--preset", "medium", "--out", str(tmp_path / "r")]) == 2
    assert "invalid choice: 'medium'" in capsys.readouterr().err
    assert main(["run", "--help"]) == 0
    assert "medium: E7 only" in " ".join(capsys.readouterr().out.split())
    assert main(["list", "E7"]) == 0 and "medium" in capsys.readouterr().out.splitlines()[1]
