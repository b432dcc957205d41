"""The embedded demo: a synthetic COCO-format shapes dataset (``synthetic``) and a small real
detector trained on it (``train``), committed as a TF SavedModel in ``model/``."""
from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "model"
