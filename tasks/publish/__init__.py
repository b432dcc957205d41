"""Stage 5 — publishing: the report (``report``: report.json/csv/md, the table artifact), the
run history appended per run (``history``: one Parquet object per run), plots and the
self-contained report.html (``plots``, ``html_report``, ``presentation``), and reading published
runs back (``results``: the ``quantbench results`` commands), the op diagnosis as text
(``diagnosis``).

May import: ``tasks.store``, ``tasks.data``, ``tasks.model``, ``tasks.run``, ``tasks.score``."""
