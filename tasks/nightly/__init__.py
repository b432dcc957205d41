"""Stage 6 — the nightly loop: compare a run with its previous comparable run in the store and
decide what regressed, with paired bootstrap significance (``regression``), and tell people
(``alerts``: Prefect events and the shipped automations).

May import: ``tasks.store``, ``tasks.data``, ``tasks.model``, ``tasks.run``, ``tasks.score``, ``tasks.publish``."""
