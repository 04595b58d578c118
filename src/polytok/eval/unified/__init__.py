"""Evaluation of a unified model on the ``shapes`` world (:func:`evaluate_unified`): generation judged per
attribute, captions parsed, teacher-forced image bits, likelihood choice and captions re-ranked by the
generator. It reads the unified model through its public methods; nothing below ``polytok.unified``
imports this package."""
