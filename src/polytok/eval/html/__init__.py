"""Self-contained HTML pages (inline CSS, PNGs as base64): the tokenizer report (:mod:`.tokenizer`, with its
first screen in :mod:`.overview` and shared pieces in :mod:`.pieces`), the unified model's section
(:mod:`.unified`) and the figures drawn for both (:mod:`.plots`)."""
