"""The HTML report: self-contained, and rendered for real in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from polytok.eval import ModuleFeatures, evaluate_tokenizer, render_report, write_report
from test_eval_evaluate import PatchResidualTokenizer, batches
from test_eval_frechet import small_backbone
from test_eval_photos import PHOTOS, photo_crops

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory):
    torch_home = tmp_path_factory.mktemp("torch_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(torch_home))
    images, labels = photo_crops(24, size=32, seed=6)
    reports = []
    try:
        for levels in (2, 3):
            tok = PatchResidualTokenizer(images, labels, levels=levels, k=16)
            reports.append(
                evaluate_tokenizer(
                    tok,
                    batches(images, labels, 8),
                    zero_shot={"class_names": list(PHOTOS), "templates": ["a photo of {}."]},
                    feature_spaces=[ModuleFeatures(small_backbone(), name="small-conv")],
                    num_samples=4,
                    name=f"patch-rvq-{levels}",
                    protocol={"dataset": "skimage crops"},
                )
            )
    finally:
        mp.undo()
    return reports


def test_report_is_self_contained(two_reports, tmp_path) -> None:
    path = write_report(two_reports, tmp_path / "report.html", title="two tokenizers")
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    # 4 samples x (original + depths) per report, one codebook plot each, one depth-curve plot.
    expected = 4 * (1 + 2) + 4 * (1 + 3) + 2 + 1
    assert len(images) == expected
    for attrs in images:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not [t for t, a in parser.tags if t in ("link", "iframe") or (t == "script" and a.get("src"))]
    assert not re.search(r"""(src|href)=["']https?:""", text)
    assert text.count("<section") == 2
    assert 'id="comparison"' in text and "patch-rvq-2" in text and "patch-rvq-3" in text
    assert "weights-inception-2015-12-05" in text  # the reason rFID was skipped is shown
    assert "skimage crops" in text  # protocols are shown next to the figures
    assert render_report(two_reports[0]).count("<section") == 1
    with pytest.raises(ValueError, match="no reports"):
        render_report([])


def _chromium(*args: str, user_dir) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_dir}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get update && apt-get install -y chromium)",
)
def test_report_renders_in_headless_chromium(two_reports, tmp_path) -> None:
    path = write_report(two_reports, tmp_path / "report.html")
    url = path.resolve().as_uri()
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", url, user_dir=tmp_path / "profile1").stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    total = re.search(r'data-images-total="(\d+)"', body.group(1))
    decoded = re.search(r'data-images-decoded="(\d+)"', body.group(1))
    assert total and decoded, body.group(0)
    assert int(total.group(1)) == 4 * 3 + 4 * 4 + 3
    assert decoded.group(1) == total.group(1)  # every embedded PNG decoded in the browser
    assert re.search(r'<table id="comparison">.*patch-rvq-2.*patch-rvq-3', dom, re.S)
    assert dom.count('<table class="metrics">') == 2
    assert dom.count('<table class="depth">') == 2

    shot = tmp_path / "report.png"
    _chromium("--window-size=1280,2400", f"--screenshot={shot}", url, user_dir=tmp_path / "profile2")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2400, 1280)
    not_white = (pixels < 240).any(axis=2).mean()
    assert not_white > 0.03, f"screenshot is nearly blank ({not_white:.3%} non-white pixels)"
    assert pixels.std() > 20


def test_best_value_direction_per_metric() -> None:
    """Higher is better for PSNR, lower for distances and divergences (rFD, semantic KL)."""
    from polytok.eval import EvalReport, MetricResult

    def report(name: str, psnr: float, kl: float, rfd: float) -> EvalReport:
        metrics = {
            "PSNR": MetricResult(psnr, {}),
            "semantic KL": MetricResult(kl, {}),
            "rFD (EfficientNet-Lite0)": MetricResult(rfd, {}),
        }
        return EvalReport(name=name, metrics=metrics)

    html = render_report([report("a", 20.0, 0.5, 10.0), report("b", 25.0, 0.9, 30.0)])
    best = re.findall(r'<td class="num best">([^<]*)</td>', html)
    assert sorted(best) == sorted(
        [MetricResult(25.0, {}).format(), MetricResult(0.5, {}).format(), MetricResult(10.0, {}).format()]
    )
