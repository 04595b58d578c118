"""The metrics themselves, each usable alone: pixel fidelity (PSNR, SSIM), LPIPS, Frechet distance and
Inception Score in any feature space, codebook health, linear probe, zero-shot classification, semantic
fidelity. Each streams over batches and returns :class:`polytok.eval.result.MetricResult` with its
protocol; the metric families (``polytok.eval.families``) run them inside ``evaluate_tokenizer``."""
