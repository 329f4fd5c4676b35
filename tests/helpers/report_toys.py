"""Two small experiments for the report tests: JUDGED (one claim of each verdict on demand, a figure whose file
name needs percent-encoding, a unit that raises on demand) and ABSENT (a prerequisite that is never there).

``registered()`` registers both for the duration of a ``with`` block (so ``samkit list`` elsewhere is unchanged);
``links`` and ``check_links`` read the targets of a report page.
"""

from __future__ import annotations

import contextlib
import html.parser
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from samkit.experiments import Claim, Experiment, Figure, Unit, register
from samkit.experiments.base import Scope
from samkit.experiments.plotting import new_figure, save_figure

SETTING = "grid xs=[1.0, 2.0, 3.0] (shared by J.1 and J.2)"
OTHER_SETTING = "another setting | with a pipe"


class Judged(Experiment):
    name = "JUDGED"
    title = "Judged <toy>"
    summary = "Squares three numbers and judges them."
    presets = {
        p: {"seed": 0, "xs": [1.0, 2.0, 3.0], "fail": False, "exercised": True, "boom": -1.0}
        for p in ("tiny", "quick", "full")
    }

    def units(self, config):
        return [Unit(f"x{x:g}", {"x": x, "boom": config["boom"]}) for x in config["xs"]]

    def run_unit(self, params):
        if params["x"] == params["boom"]:
            raise ValueError(f"unit x={params['x']:g} is broken on purpose")
        return {"y": params["x"] ** 2}

    def tables(self, config, results):
        return {"squares": [{"key": k, "y": r["y"]} for k, r in results.items()]}

    def claims(self, config, data):
        ys = data["squares"].col("y")
        return [
            Claim(
                "J.1",
                "squares are non-negative",
                SETTING,
                "min y >= 0",
                f"min y = {ys.min():g}",
                "none",
                bool(ys.min() >= 0),
                figure="squares.png",
            ),
            Claim(
                "J.2",
                "the toy passes unless told to fail",
                SETTING,
                "pass",
                "fail" if config["fail"] else "pass",
                "none",
                not config["fail"],
                figure="squares.png",
            ),
            Claim(
                "J.3",
                "a claim whose precondition may not hold",
                OTHER_SETTING,
                "exercised",
                str(config["exercised"]),
                "none",
                True,
                exercised=config["exercised"],
                figure="a b#1.png",
            ),
        ]

    def scope(self, config):
        return [Scope("toy <net>", f"{len(config['xs'])} numbers squared", ["J.1", "J.2"])]

    def findings(self, config, data, claims):
        ys = data["squares"].col("y")
        return [f"the toy was told to fail; its largest square is {ys.max():g}"] if config["fail"] else []

    def figures(self, config, data, fig_dir):
        ys = data["squares"].col("y")
        for file, style in (("squares.png", "o-"), ("a b#1.png", "s--")):
            fig, ax = new_figure()
            ax[0, 0].plot(ys, style)
            ax[0, 0].set_title(f"JUDGED: {file}")
            save_figure(fig, fig_dir / file)
        return [
            Figure("squares.png", "Squares", "The squares.", ["J.1", "J.2"], ["data/squares.csv"]),
            Figure(
                "a b#1.png",
                "A name to encode",
                "The same, under a file name with a space and a hash.",
                ["J.3"],
                ["data/squares.csv"],
            ),
        ]


class Absent(Experiment):
    name = "ABSENT"
    title = "Needs what is not there"
    summary = "Never runs."
    presets = {p: {"seed": 0} for p in ("tiny", "quick", "full")}

    def missing(self, config):
        return "the moon is not in /nonexistent/moon (set MOON_DIR)"

    def units(self, config):  # pragma: no cover - never reached
        return []


@contextlib.contextmanager
def registered() -> Iterator[None]:
    from samkit.experiments import _REGISTRY

    for cls in (Judged, Absent):
        register(cls)
    try:
        yield
    finally:
        for cls in (Judged, Absent):
            _REGISTRY.pop(cls.name, None)


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.targets.append(a["href"])
        if tag == "img" and "src" in a:
            self.targets.append(a["src"])


def links(page: str) -> _Links:
    p = _Links()
    p.feed(page)
    return p


def check_links(report: Path, page: str) -> int:
    """Every link of ``page`` is relative and resolves (a file of the folder, or an id of the page)."""
    p = links(page)
    for target in p.targets:
        if target.startswith("#"):
            assert target[1:] in p.ids, target
        else:
            assert target.startswith("./") and "://" not in target, target
            assert (report / unquote(target)).is_file(), target
    return len(p.targets)
