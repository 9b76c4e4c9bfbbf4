"""The run report: a self-contained page with metrics, curves, confusion matrix and gallery, checked in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from weakseg.cli import main
from weakseg.engine.pipeline import Pipeline
from weakseg.engine.recipe import load_recipe
from weakseg.engine.run_report import REPORT_NAME, write_run_report
from weakseg.errors import DataError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="data:image/(?:png|jpeg);base64,', page)


@pytest.fixture(scope="module")
def cam_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished three-stage run (CAM → pseudo-labels → segmentation) trained through the CLI."""
    out = tmp_path_factory.mktemp("report") / "cam"
    overrides = tiny_overrides(shapes, out, "train.steps=2", "pseudo.scales=[1.0]")
    assert main(["train", "cam-tags", *overrides, "-q"]) == 0
    return out


@pytest.mark.slow
def test_train_writes_a_report_with_every_section(cam_run: Path) -> None:
    page = (cam_run / REPORT_NAME).read_text()
    for heading in ("Metrics", "Pseudo-labels of the training images", "Per-class IoU", "Confusion matrix",
                    "Training curves", "Training images"):  # fmt: skip
        assert f">{heading}" in page, heading
    assert ">cam</h3>" in page and ">seg</h3>" in page  # both training stages' curves
    # 3 training images × (image, weak labels, pseudo-labels, prediction, ground truth) + bars, matrix, 2 curves
    gallery = min(6, 8)
    assert len(_images(page)) == gallery * 5 + 4
    assert "weak labels (tags)" in page and "pseudo-labels" in page and "http" not in page.split("<body>")[1]


@pytest.mark.slow
def test_report_of_a_single_stage_run_and_of_an_evaluation(shapes: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(shapes, tmp_path / "run", "train.steps=2")
    Pipeline(load_recipe("pce-points", overrides), progress=False).run()
    page = write_run_report(tmp_path / "run", gallery=2).read_text()
    assert "weak labels (points)" in page and "pseudo-labels" not in page
    assert len(_images(page)) == 2 * 4 + 3
    assert main(["eval", str(tmp_path / "run"), "--split", "val", "-q"]) == 0
    assert "on val" in (tmp_path / "run" / "report-val.html").read_text()


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a finished run folder"):
        write_run_report(tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_report_renders_in_a_headless_browser_with_every_image(cam_run: Path, tmp_path: Path) -> None:
    page = cam_run / REPORT_NAME
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom"]  # fmt: skip
    done = subprocess.run([CHROMIUM, *flags, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:500]
    expected = len(_images(page.read_text()))
    assert f'data-images-loaded="{expected}"' in body.group(1) and 'data-images-broken="0"' in body.group(1)
