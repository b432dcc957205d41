"""Stage 7 — browsing: ``quantbench serve``, a read-only web site over a store's published runs.
What the store holds, read once and kept while it is unchanged (``catalog``: runs by their
report.json's version, the history by each Parquet object's version), the pages (``pages``: the
runs list, a run's page rendered again from its report.json, the nightly view of a model, two runs
compared), the nightly view's charts as inline SVG with a link per point (``charts``), and the
ASGI application with its access rules (``app``: token or basic auth, containment of run ids and
file names, security headers).

May import: ``tasks.store``, ``tasks.data``, ``tasks.model``, ``tasks.run``, ``tasks.score``, ``tasks.publish``, ``tasks.nightly``."""
