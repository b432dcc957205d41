"""Stage 3 — running the variants: one task per (variant, shard) that decodes ahead
(``prefetch``), runs the interpreter and stores the shard's COCO results under a content key
(``inference``), follows the shards' progress (``progress``), meters what they cost (``usage``,
``energy`` with CodeCarbon's vendored tables in ``codecarbon/``), and times ``invoke()`` alone, one
variant at a time (``latency``).

May import: ``tasks.store``, ``tasks.data``, ``tasks.model``."""
