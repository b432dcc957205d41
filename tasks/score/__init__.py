"""Stage 4 — scoring: gather a variant's shards into one COCO results JSON in the store
(``gather``), evaluate it with pycocotools or faster-coco-eval (``evaluation``), keep the
per-image matching (``matching``) and bootstrap confidence intervals of ΔAP from it
(``significance``): one variant scored in a process of its own (``scoring``), the stage's Prefect
tasks (``steps``); and the AP each op of a quantized variant costs (``diagnosis``).

May import: ``tasks.store``, ``tasks.data``, ``tasks.model``, ``tasks.run``."""
