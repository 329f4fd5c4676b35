"""The report in a real browser (issue 14): headless Chromium loads a freshly generated ``index.html``.

The report holds a real experiment (E3, tiny preset), a toy with a FAIL and a NOT EXERCISED claim and a figure whose
file name needs encoding, and an experiment that did not run; the folder is then moved. Chromium's DOM must link
only to files that exist in the moved folder (or to ids of the page), and its screenshot must not be blank.
Skipped, with the reason, where Chromium is not installed (``.ci/run`` installs Debian's ``chromium`` as root).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from report_toys import check_links, links, registered

from samkit.cli import main

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on PATH: `apt-get install chromium` as root (.ci/run does)"
)


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1600,1200",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def _png_pixels(path: Path) -> np.ndarray:
    """The screenshot as 0-255 integers, (height, width, channels), decoded by matplotlib."""
    import matplotlib.image

    return np.round(matplotlib.image.imread(path) * 255).astype(np.int32)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "results"
    args = ["--preset", "tiny", "--out", str(out), "--no-progress", "--jobs", "1"]
    with registered():
        assert main(["run", "E3", *args]) == 0
        assert main(["run", "JUDGED", *args, "--set", "fail=true", "--set", "exercised=false"]) == 1
        assert main(["run", "ABSENT", *args]) == 3
    moved = out.parent / "moved elsewhere"
    shutil.move(out, moved)  # links must not depend on where the report was written
    return moved


def test_every_image_and_link_resolves_in_the_browser_dom(report, tmp_path):
    dom = _chromium(tmp_path / "profile", "--dump-dom", (report / "index.html").as_uri()).stdout
    assert "<h2>Summary</h2>" in dom and "id='E3'" not in dom  # the DOM, re-serialized by the browser
    parsed = links(dom)
    imgs = [t for t in parsed.targets if t.endswith(".png")]
    assert len(imgs) >= 6 and any("a%20b%231.png" in t for t in imgs)  # E3's 3 figures (×2: img and link), toy's 2
    assert check_links(report, dom) == len(parsed.targets)
    assert {"E3", "JUDGED", "ABSENT", "JUDGED-J.2", "JUDGED-J.3", "summary", "contents"} <= parsed.ids


def test_the_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(tmp_path / "profile", f"--screenshot={shot}", (report / "index.html").as_uri())
    px = _png_pixels(shot)[:, :, :3]
    assert px.shape[:2] == (1200, 1600)
    colours = np.unique(px[:, :, 0] * 65536 + px[:, :, 1] * 256 + px[:, :, 2])
    assert len(colours) > 200  # text, badges, figure lines: far more than a blank or error page
    rows_with_content = (px.std(axis=(1, 2)) > 5).mean()
    assert rows_with_content > 0.5  # most of the first screen carries something
    red = (px[:, :, 0] > 150) & (px[:, :, 1] < 60) & (px[:, :, 2] < 70)
    assert red.sum() > 50  # the FAIL badge is on the first screen (the summary comes first)
