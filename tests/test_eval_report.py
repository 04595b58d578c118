"""The HTML report: self-contained, and rendered for real in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
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
    # 4 samples x (original + depths) per report, one codebook plot each, one depth-curve plot, and the
    # strip: the 4 originals (the same for both) and each report's deepest reconstructions.
    expected = 4 * (1 + 2) + 4 * (1 + 3) + 2 + 1 + 4 * (1 + 2)
    assert len(images) == expected
    for attrs in images:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not [t for t, a in parser.tags if t in ("link", "iframe") or (t == "script" and a.get("src"))]
    assert not re.search(r"""(src|href)=["']https?:""", text)
    assert text.count('<details class="tokenizer"') == 2
    assert text.count('<table class="headline">') == 1  # one dataset
    assert 'class="comparison"' in text and "patch-rvq-2" in text and "patch-rvq-3" in text
    assert "weights-inception-2015-12-05" in text  # the reason rFID was skipped is shown
    assert "skimage crops" in text  # protocols are shown next to the figures
    assert render_report(two_reports[0]).count('<details class="tokenizer"') == 1
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
    assert int(total.group(1)) == 4 * 3 + 4 * 4 + 3 + 4 * 3
    assert decoded.group(1) == total.group(1)  # every embedded PNG decoded in the browser
    assert re.search(r'<table class="comparison">.*patch-rvq-2.*patch-rvq-3', dom, re.S)
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
    full = re.search(r'<table class="comparison">.*?</table>', html, re.S).group(0)
    best = re.findall(r'<td class="num best"[^>]*>([^<]*)</td>', full)
    assert sorted(best) == sorted(
        [MetricResult(25.0, {}).format(), MetricResult(0.5, {}).format(), MetricResult(10.0, {}).format()]
    )
    headline = re.search(r'<table class="headline">.*?</table>', html, re.S).group(0)
    assert re.findall(r'<td class="num best"[^>]*>([^<]*)</td>', headline) == ["25.00"]  # PSNR only
    tie = render_report([report("a", 20.0, 0.5, 10.0), report("b", 20.0, 0.5, 10.0)])
    assert 'class="num best"' not in tie  # a tie everywhere has no best


# Width and height of the first screen the overview must fit without horizontal scrolling.
SCREEN = (1300, 900)

# Measures the laid-out page once loaded and writes the figures as JSON into <pre id="layout-measure">.
_MEASURE = """<script>
window.addEventListener('load', function () {
  var root = document.documentElement;
  function box(el) {
    var r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, right: r.right};
  }
  function scroller(el) {
    for (var p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      var o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll') return p;
    }
    return null;
  }
  var wide = [];
  document.querySelectorAll('table, img, pre, figure').forEach(function (el) {
    var b = box(el);
    if (b.right > root.clientWidth + 0.5) {
      var s = scroller(el);
      wide.push({tag: el.tagName, cls: el.className, right: b.right, top: b.top,
                 scroller: s ? Object.assign(box(s), {clientWidth: s.clientWidth}) : null});
    }
  });
  var out = {
    scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, innerWidth: window.innerWidth,
    innerHeight: window.innerHeight, wide: wide,
    headline: Array.prototype.map.call(document.querySelectorAll('table.headline'), box),
    strip: Array.prototype.map.call(document.querySelectorAll('table.strip'), box)
  };
  var pre = document.createElement('pre');
  pre.id = 'layout-measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def builtin_reports():
    """Four real tokenizers (the shipped checkpoints and one untrained preset) on 4 held-out photo crops
    and 4 held-out shapes images, measured as the demo does: 8 reports, 4 per dataset."""
    from polytok.hub import list_shipped, load_tokenizer
    from polytok.models.tokenizer import Tokenizer
    from polytok.recipes.tokenizer_evaluation import evaluate_many

    torch.manual_seed(0)
    tokenizers = {"unitok-tiny (untrained)": Tokenizer.from_preset("unitok-tiny")}
    tokenizers.update({f"{name} (shipped)": load_tokenizer(name) for name in list_shipped()})
    toks, names = list(tokenizers.values()), list(tokenizers)
    photos = evaluate_many(
        toks, [f"{n} | photos val" for n in names], data="photos", split="val", max_images=4, batch_size=4
    )
    shapes = evaluate_many(
        toks,
        [f"{n} | shapes held-out" for n in names],
        data="shapes",
        split="heldout",
        max_images=4,
        batch_size=4,
        zero_shot_task="object",
        semantic_fidelity=False,
    )
    return photos + shapes


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get update && apt-get install -y chromium)",
)
def test_first_screen_fits_1300px_in_chromium(builtin_reports, tmp_path) -> None:
    """At 1300 x 900 the page never scrolls sideways: the per-dataset tables and the start of the
    reconstruction strip are on the first screen, and anything wider sits in a scroller below it."""
    width, height = SCREEN
    path = write_report(builtin_reports, tmp_path / "report.html")
    measured = tmp_path / "measured.html"
    measured.write_text(path.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"))
    dom = _chromium(
        f"--window-size={width},{height}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        measured.resolve().as_uri(),
        user_dir=tmp_path / "profile1",
    ).stdout
    found = re.search(r'<pre id="layout-measure">([^<]*)</pre>', dom)
    assert found, dom[-500:]
    layout = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert layout["innerWidth"] == width, layout
    assert layout["scrollWidth"] <= width, f"page scrolls sideways: scrollWidth {layout['scrollWidth']}"
    for element in layout["wide"]:  # wider than the page: only inside a scroller below the first screen
        scroller = element["scroller"]
        assert scroller is not None, element
        assert scroller["right"] <= layout["clientWidth"] + 0.5 and scroller["top"] >= height, element
    assert len(layout["headline"]) == 2  # photos and shapes
    assert all(t["right"] <= layout["clientWidth"] for t in layout["headline"])
    assert all(t["bottom"] <= height for t in layout["headline"]), layout["headline"]
    assert layout["strip"] and layout["strip"][0]["top"] < height, layout["strip"]

    shot = tmp_path / "first-screen.png"
    _chromium(
        f"--window-size={width},{height}",
        f"--screenshot={shot}",
        path.resolve().as_uri(),
        user_dir=tmp_path / "profile2",
    )
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (width, height)
        image.verify()
    print(f"first screen: {shot}")


class _Tables(HTMLParser):
    """Cells of every ``<table class=...>`` (not nested): {class: [[(tag, text, attrs), ...] per row]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[list[tuple[str, str, dict]]]]] = {}
        self._rows: list | None = None
        self._cell: list | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._rows = []
            self.tables.setdefault(attrs.get("class") or "", []).append(self._rows)
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = [tag, "", attrs]
            self._rows[-1].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "table":
            self._rows = None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def _leaf_columns(table) -> list[str]:
    """Labels of a two-row header's data columns: a spanning header joined with each of its sub-headers."""
    top, sub = table[0][1:], iter(table[1])
    labels = []
    for _, text, attrs in top:
        span = int(attrs.get("colspan") or 1)
        labels += [text] if span == 1 else [f"{text} {next(sub)[1]}" for _ in range(span)]
    return labels


def test_overview_tables_per_dataset(builtin_reports) -> None:
    """One headline table per dataset with tokenizers as rows, the codec references, the judge's accuracy
    on originals and chance beside attribute fidelity and zero-shot; every other figure further down."""
    section = '<section id="generated-samples"><h2>Generated samples</h2></section>'
    text = render_report(builtin_reports, extra_sections=[section])
    parser = _Tables()
    parser.feed(text)
    photos, shapes = parser.tables["headline"]
    for table, reports in ((photos, builtin_reports[:4]), (shapes, builtin_reports[4:])):
        columns = _leaf_columns(table)
        assert columns[:5] == [
            "bits / image",
            "PSNR (dB) tokenizer",
            "PSNR (dB) JPEG",
            "PSNR (dB) bicubic",
            "SSIM",
        ]
        rows = {row[0][1]: {c: cell for c, cell in zip(columns, row[1:])} for row in table[2:]}
        names = [r.name.split(" | ")[0] for r in reports]
        assert list(rows)[: len(names)] == names  # tokenizers as rows, in the order given
        for name, report in zip(names, reports):
            cells = rows[name]
            psnr = report.metrics["PSNR"]
            assert cells["PSNR (dB) tokenizer"][1] == f"{psnr.value:.2f}"
            tooltip = cells["PSNR (dB) tokenizer"][2]["title"]
            assert f"decoded_levels: {psnr.protocol['decoded_levels']}" in tooltip
            jpeg = report.metrics["PSNR[JPEG, equal bits]"]
            assert cells["bits / image"][1] == f"{jpeg.protocol['budget_bits_per_image']:.0f}"
            assert (
                cells["PSNR (dB) JPEG"][1] == f"{jpeg.value:.2f}"
                and "ref" in cells["PSNR (dB) JPEG"][2]["class"]
            )
        best = max(r.metrics["PSNR"].value for r in reports)
        marked = [
            row["PSNR (dB) tokenizer"][1]
            for name, row in rows.items()
            if "best" in (row["PSNR (dB) tokenizer"][2].get("class") or "")
        ]
        assert marked == [f"{best:.2f}"]
    assert "semantic agreement" in _leaf_columns(photos)
    assert not any("attribute" in c for c in _leaf_columns(photos))

    columns = _leaf_columns(shapes)
    attributes = [f"attribute fidelity {a}" for a in ("shape", "colour", "all")]
    assert columns[5:] == [*attributes, "zero-shot top-1"]
    rows = {row[0][1]: dict(zip(columns, [c[1] for c in row[1:]])) for row in shapes[2:]}
    judge, chance = rows["judge on originals"], rows["chance"]
    cells = rows["judge on token-cell means"]  # every tiny tokenizer has stride 4: one value per column
    first = builtin_reports[4].metrics
    for column, attribute in zip(attributes, ("shape", "colour", "all")):
        protocol = first[f"attr[{attribute}]"].protocol
        assert judge[column] == f"{protocol['judge_accuracy_on_originals']:.3f}"
        assert cells[column] == f"{protocol['judge_accuracy_on_cell_means']:.3f}"
        assert chance[column] == f"{protocol['chance']:.3f}"
    classes = first["zero-shot top-1"].protocol["num_classes"]
    assert classes == 42 and chance["zero-shot top-1"] == f"{1 / classes:.3f}"
    no_text = [r for r in builtin_reports[4:] if "zero-shot top-1" not in r.metrics]
    assert no_text  # evotok-tiny has no text tower: its cell says why
    for report in no_text:
        row = next(row for row in shapes[2:] if row[0][1] == report.name.split(" | ")[0])
        assert row[-1][2]["title"] == report.skipped["zero-shot"] and "text tower" in row[-1][2]["title"]

    # every figure of every report stays in the report: the full table of its dataset and its details
    full = parser.tables["comparison"]
    assert len(full) == 2
    for table, reports in zip(full, (builtin_reports[:4], builtin_reports[4:])):
        listed = {row[0][1] for row in table[1:]}
        assert set().union(*(r.metrics for r in reports)) <= listed
    assert all(f'<details class="tokenizer" id="report-{i}">' in text for i in range(len(builtin_reports)))
    # the extra section comes after the tokenizer tables and before the full figures
    overview_end = text.index("</section>", text.index('<section id="overview">'))
    assert overview_end < text.index(section) < text.index('<section id="all-figures">')


def test_extra_sections_must_be_html_strings(two_reports) -> None:
    with pytest.raises(ValueError, match="one string"):
        render_report(two_reports, extra_sections="<section>x</section>")
    with pytest.raises(ValueError, match="HTML strings"):
        render_report(two_reports, extra_sections=[b"<section>x</section>"])
