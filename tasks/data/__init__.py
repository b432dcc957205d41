"""Stage 1 — the data: a COCO dataset (annotations + image folder, local or S3), its
content-fingerprinted images and shards, image decoding, and the one conversion of detections
into COCO results (``coco_format``: TF OD API normalised ``[ymin, xmin, ymax, xmax]`` → COCO
``[x, y, width, height]`` pixels; ``masks``: box-relative masks → RLE).

May import: ``tasks.store``."""
