"""quantbench's domain: one module per stage, each a plain function plus its Prefect task."""
import os

# TensorFlow's C++ INFO/WARNING lines (loader chatter) drown the progress output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
