"""Small experiments for the executor and fault tests, in an importable module so worker processes can load them.

``SAMKIT_TEST_KILL_ONCE=PATH``: the first unit that finds no file at PATH creates it and SIGKILLs its own process
(a worker dying mid-unit). ``SAMKIT_TEST_FAIL_KEY=KEY``: the unit with that key raises.
``SAMKIT_TEST_MISSING=why``: the experiment reports a missing prerequisite.
``SAMKIT_TEST_RENDEZVOUS=DIR``: each unit writes its pid into DIR and waits (up to 60 s) until two distinct processes
have — it finishes only when two units really run at the same time in two processes.
"""

from __future__ import annotations

import os
import signal
import time

from samkit.experiments import Claim, Experiment, Figure, Unit


class Squares(Experiment):
    name = "SQUARES"
    title = "Squares"
    summary = "Squares numbers, slowly enough for the workers to overlap."
    presets = {
        "tiny": {"seed": 0, "xs": [1.0, 2.0, 3.0, 4.0], "bound": 100.0, "sleep": 0.05},
        "quick": {"seed": 0, "xs": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "bound": 100.0, "sleep": 0.05},
        "full": {"seed": 0, "xs": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "bound": 100.0, "sleep": 0.05},
    }

    def units(self, config):
        return [Unit(f"x{x:g}", {"x": x, "seed": config["seed"], "sleep": config["sleep"]}) for x in config["xs"]]

    def run_unit(self, params):
        marker = os.environ.get("SAMKIT_TEST_KILL_ONCE")
        if marker and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ.get("SAMKIT_TEST_FAIL_KEY") == f"x{params['x']:g}":
            raise ValueError("this unit is broken on purpose")
        meet = os.environ.get("SAMKIT_TEST_RENDEZVOUS")
        if meet:
            open(os.path.join(meet, str(os.getpid())), "w").close()
            deadline = time.time() + 60
            while len(os.listdir(meet)) < 2 and time.time() < deadline:
                time.sleep(0.01)
        time.sleep(params["sleep"])
        return {"y": params["x"] ** 2, "pid": os.getpid()}

    def missing(self, config):
        return os.environ.get("SAMKIT_TEST_MISSING") or None

    def tables(self, config, results):
        return {"squares": [{"key": k, "y": r["y"]} for k, r in results.items()]}

    def claims(self, config, data):
        ys = data["squares"].col("y")
        return [
            Claim(
                id="SQ.1",
                statement="squares stay below the bound",
                setting=f"xs={config['xs']}",
                prediction=f"max y < {config['bound']}",
                measured=f"max y = {ys.max():g}",
                tolerance="none",
                passed=bool(ys.max() < config["bound"]),
            )
        ]

    def figures(self, config, data, fig_dir):
        return [Figure("none.png", "None", "No figure.", [], [])]
