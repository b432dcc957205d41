"""Stage 0, beneath everything — the store: one interface over a local folder and S3
(``object_store``: keys, atomic writes, multipart uploads, the local cache of fetched objects) and
the errors every stage raises (``errors``: one-line :class:`QuantbenchError`, transient vs not,
the retry settings of store-touching tasks) and reused results kept with their SHA-256
(``recorded``: written with a digest record, reused only while their content matches it).

May import: nothing of ``tasks`` outside this package."""
