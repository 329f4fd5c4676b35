"""The docs site: it builds in strict mode, its API pages show the docstrings, every page is in the nav, and every
example a recipe shows is a file that a test runs (so a recipe can never show untested code)."""

import doctest
import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
#: pymdownx.snippets' include line: --8<-- "examples/ddp.py"
SNIPPET = re.compile(r"""^\s*-{1,}8<-{1,}\s+["']([^"']+)["']""", re.M)
#: pages deliberately left out of the nav (none yet)
NOT_IN_NAV: set[str] = set()
#: examples this file runs itself (the others are run by their own tests)
RUN_HERE = {"choose_rho.py"}


def _mkdocs() -> None:
    for mod in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx"):
        pytest.importorskip(mod, reason=f"{mod} is not installed: pip install -e '.[docs]' (make docs)")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def _text(page: Path) -> str:
    """A built page's text: tags removed (highlighted code is split into spans), entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def _nav_pages() -> set[str]:
    return set(
        re.findall(
            r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M
        )
    )


def _includes() -> dict[str, list[str]]:
    """page (relative to docs/) -> the files it includes by pymdownx.snippets."""
    return {
        str(p.relative_to(DOCS)): SNIPPET.findall(p.read_text(encoding="utf-8")) for p in sorted(DOCS.rglob("*.md"))
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    _mkdocs()
    out = tmp_path_factory.mktemp("site")
    proc = _build(ROOT / "mkdocs.yml", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    return out


def test_site_builds_in_strict_mode_with_the_api_rendered_from_the_docstrings(site):
    sam = _text(site / "api" / "optimizers" / "index.html")
    for name in ("samkit.optim.sam.SAM", "first_step", "second_step", "step_accumulated", "normalization", "USAM"):
        assert name in sam, name
    assert "base_optimizer: type[Optimizer] | Optimizer" in sam  # the signature, with its annotations
    assert "Sharpness-Aware Minimization with normalization as a first-class knob" in sam  # the docstring
    for page, names in {
        "core": ["perturbation", "global_norm"],
        "dynamics": ["simulate", "Quadratic", "usam_threshold"],
        "train": ["TrainConfig", "train"],
        "experiments": ["Claim", "verdict", "ExperimentResult", "Tally", "run_experiment"],
        "report": ["write_report"],
        "registry": ["register"],
        "groups": ["ProportionalRho", "asam_param_groups"],
        "sharpness": ["top_eigenvalues", "hessian_trace"],
        "sweep": ["run_sweep"],
    }.items():
        text = _text(site / "api" / page / "index.html")
        for name in names:
            assert name in text, (page, name)
    # doctests render as code, not as Markdown quotes or links; Sphinx roles as code, not as ":class:"
    core = (site / "api" / "core" / "index.html").read_text(encoding="utf-8")
    assert "<blockquote" not in core and "&gt;&gt;&gt;" in core
    assert not re.search(
        r":(class|func|mod|meth|attr|data):<", (site / "api" / "experiments" / "index.html").read_text(encoding="utf-8")
    )


def test_each_recipe_page_shows_the_example_file_as_it_is(site):
    shown = 0
    for page, files in _includes().items():
        if not files:
            continue
        built = (
            Path(page).with_suffix(".html") if Path(page).stem == "index" else Path(page).with_suffix("") / "index.html"
        )
        text = re.sub(r"\s+", " ", _text(site / built))
        for f in files:
            for line in (ROOT / f).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    assert re.sub(r"\s+", " ", line.strip()) in text, (page, f, line)
            shown += 1
    assert shown >= 4


def test_every_included_example_exists_and_is_run_by_a_test():
    sources = {p: p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"}
    included = [(page, f) for page, files in _includes().items() for f in files]
    assert {f for _, f in included} >= {"examples/accumulation.py", "examples/ddp.py", "examples/choose_rho.py"}
    for page, f in included:
        assert (ROOT / f).is_file(), f"{page} includes {f}, which does not exist"
        if f.startswith("examples/"):
            name = Path(f).name
            run = name in RUN_HERE or any(f'"{name}"' in src for src in sources.values())
            assert run, f"{page} shows {f}, but no test under tests/ runs it (by its quoted file name)"
    for name in RUN_HERE:
        assert f"test_{Path(name).stem}_example" in Path(__file__).read_text(encoding="utf-8")


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    nav = _nav_pages()
    assert not pages - nav - NOT_IN_NAV, f"pages missing from mkdocs.yml's nav: {sorted(pages - nav - NOT_IN_NAV)}"
    assert not nav - pages, f"nav entries without a page: {sorted(nav - pages)}"
    assert {"index.md", "getting-started.md", "claims.md", "api/index.md", "recipes/choosing-rho.md"} <= nav


def _variant(tmp_path: Path, pages: dict[str, str]) -> Path:
    """mkdocs.yml with its own settings, on a docs folder of ``pages`` only."""
    docs = tmp_path / "docs"
    for name, text in pages.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    cfg = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    cfg = re.sub(r"(?ms)^nav:\n.*?(?=^\S)", "nav:\n" + "".join(f"  - {p}\n" for p in pages), cfg)
    cfg = cfg.replace("docs_dir: docs", f"docs_dir: {docs}")
    cfg = cfg.replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    cfg = cfg.replace("- docs/api/griffe_samkit.py", f"- {ROOT / 'docs' / 'api' / 'griffe_samkit.py'}")
    config = tmp_path / "mkdocs.yml"
    config.write_text(cfg, encoding="utf-8")
    return config


@pytest.mark.parametrize(
    "page, error",
    [
        ("# API\n\n::: samkit.optim.sam.NoSuchOptimizer\n", "NoSuchOptimizer"),
        ('# Recipe\n\n```python\n--8<-- "examples/no_such_example.py"\n```\n', "no_such_example.py"),
        ("# Recipe\n\nSee [the API](api/no-such-page.md).\n", "no-such-page.md"),
        ("# Recipe\n\nSee [SAM][samkit.optim.sam.NoSuchName].\n", "NoSuchName"),
        ("# Recipe\n\nSee [home](index.md#no-such-anchor).\n", "no-such-anchor"),
    ],
)
def test_the_strict_build_fails_on_a_broken_reference(tmp_path, page, error):
    _mkdocs()
    config = _variant(tmp_path, {"index.md": "# Home\n", "page.md": page})
    proc = _build(config, tmp_path / "site")
    assert proc.returncode != 0 and error in proc.stderr, proc.stderr[-3000:]


def test_the_docstring_extension_doctests():
    pytest.importorskip("griffe", reason="griffe is not installed: pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("griffe_samkit", DOCS / "api" / "griffe_samkit.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = doctest.testmod(mod)
    assert result.attempted >= 3 and result.failed == 0


def test_choose_rho_example_sweeps_and_reads_the_table(tmp_path):
    out = tmp_path / "rho"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "choose_rho.py"), "--out", str(out), "--seeds", "0", "--jobs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["sam"], ["usam"])]
    assert sorted((r[0], float(r[1])) for r in rows) == [(o, rho) for o in ("sam", "usam") for rho in (0.01, 0.1, 1)]
    for opt, rho, acc, eps, *_ in rows:
        assert 0 <= float(acc) <= 1
        if opt == "sam":
            assert float(eps) == pytest.approx(float(rho), rel=1e-3)  # SAM's ‖ε‖ is ρ
        else:
            assert float(eps) != pytest.approx(float(rho), rel=1e-3)  # USAM's is ρ‖g‖
    best = dict(re.findall(r"best rho for (\w+): (\S+)", proc.stdout))
    assert set(best) == {"sam", "usam"} and all(float(v) in (0.01, 0.1, 1) for v in best.values())
    assert (out / "sweep.csv").is_file() and (out / "sweep.png").is_file()
