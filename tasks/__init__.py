"""quantbench's domain, one package per pipeline stage, bottom to top:

``store`` → ``data`` → ``model`` → ``run`` → ``score`` → ``publish`` → ``nightly`` → ``browse``.

Each module is a step: a plain function plus its Prefect task. A stage imports only from stages
below it, never above and never in a circle (tests/test_layout.py checks it); ``flows/`` composes
them.
"""
import os

# TensorFlow's C++ INFO/WARNING lines (loader chatter) drown the progress output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
