"""``evaluate_many``: the full-depth-only mode gives the same headline figures as the full curves."""

from __future__ import annotations

import math

from polytok.hub import load_tokenizer
from polytok.recipes.tokenizer_evaluation import evaluate_many


def test_full_depth_only_keeps_the_headline_figures():
    tok = load_tokenizer("evotok-tiny")  # 8 residual levels, pixels from the first 4: curves cost most here
    kwargs = dict(
        data="shapes",
        split="heldout",
        max_images=8,
        batch_size=8,
        zero_shot_task="object",
        semantic_fidelity=False,
        linear_probe=False,
    )
    (curves,) = evaluate_many([tok], ["curves"], **kwargs)
    (headline,) = evaluate_many([tok], ["headline"], depth_curves=False, **kwargs)
    assert curves.depths == list(range(1, 9))
    assert headline.depths == [4, 8]  # the pixel decoder's depth and the full code depth
    assert all(set(curve) <= {4, 8} for curve in headline.depth_curves.values())
    assert set(curves.depth_curves["PSNR"]) == {1, 2, 3, 4} and set(headline.depth_curves["PSNR"]) == {4}
    assert set(headline.metrics) == set(curves.metrics)
    for key, metric in curves.metrics.items():
        assert math.isclose(headline.metrics[key].value, metric.value, rel_tol=1e-6, abs_tol=1e-9), key
    assert {"PSNR", "attr[shape]", "attr[all]"} <= set(headline.metrics)
