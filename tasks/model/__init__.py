"""Stage 2 — the model: resolve a model source to a local SavedModel or ``.tflite``
(``sources``), check it (``checks``), convert and quantize it into LiteRT variants whose dtype
claims are verified by reading the flatbuffer back (``variants``, ``conversion``,
``tflite_inspect``), open an interpreter or TensorFlow runtime on it (``runtimes``), the
calibration / comparison images (``calibration``) and float32-vs-variant output differences
(``coverage``) and per op (``diagnosis``, with the variant rebuilt keeping some ops float).

May import: ``tasks.store``, ``tasks.data``."""
