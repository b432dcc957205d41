"""The model spec: which head turns a detector's raw outputs into detections, what input it
expects, and how its detections are post-processed.

One typed value, :class:`ModelSpec`, given in the UI form (one sub-form), on the CLI (``--head
NAME``, ``--spec FILE.yaml``) or in code. Every field left empty takes the head's default: its
family's own validation settings (:data:`HEAD_DEFAULTS`, each cited). :func:`resolve_spec` fills
them in once per run against the model's input, and the resolved spec is used everywhere the model
runs — the SavedModel baseline and every variant, calibration, latency, the shard key, the run
identity — and written into the report.

Pixel convention: images are decoded to RGB uint8 ``[H, W, 3]``; ``input.channels`` orders the
channels; ``input.resize`` maps the image onto the model's input (``stretch`` to its size, or
``letterbox``: scaled to fit keeping the aspect ratio, placed ``centre`` or ``top-left``, the rest
filled with ``pad``), interpolating ``bilinear`` (OpenCV's INTER_LINEAR) or ``antialias``
(Pillow's bilinear filter); then each channel value becomes ``(pixel - mean[c]) / std[c] * scale``
(``mean``/``std`` in 0-255 pixel units, in the spec's channel order). An integer input tensor
(uint8/int8) with quantization parameters receives that value quantized with its own scale and
zero point, ``round(value / scale + zero_point)`` clipped to the dtype; one without (the TF OD
API's uint8 image input) receives the pixels unchanged. Integer outputs are dequantized with each
tensor's own scale and zero point before any head reads them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.store.errors import QuantbenchError

HEADS = ("odapi", "ssd_postprocess", "yolov8", "yolov5", "yolox", "nanodet")
HeadName = Literal["auto", "odapi", "ssd_postprocess", "yolov8", "yolov5", "yolox", "nanodet"]
ClassIds = Literal["category_id", "index0", "labelmap90"]


class InputSpec(BaseModel):
    """How an RGB image becomes the model's input tensor (empty: the head's default)."""

    model_config = ConfigDict(extra="forbid")

    channels: Literal["rgb", "bgr"] | None = Field(None, title="Channel order", description="rgb or bgr (YOLOX, NanoDet: bgr).")
    layout: Literal["nhwc", "nchw"] | None = Field(None, title="Layout", description="nhwc or nchw; empty: from the input tensor's shape.")
    resize: Literal["stretch", "letterbox"] | None = Field(None, title="Resize", description="stretch to the input size (TF OD API, SSD, NanoDet) or letterbox keeping the aspect ratio (YOLO families).")
    interpolation: Literal["bilinear", "antialias"] | None = Field(None, title="Interpolation", description="bilinear: plain bilinear, no antialiasing (OpenCV INTER_LINEAR: the YOLO families, YOLOX, NanoDet, SSD); antialias: Pillow's bilinear filter, widened when shrinking (quantbench's TF OD API default).")
    align: Literal["centre", "top-left"] | None = Field(None, title="Letterbox alignment", description="Where a letterboxed image sits: centre (Ultralytics) or top-left (YOLOX).")
    pad: float | None = Field(None, ge=0, le=255, title="Letterbox pad value", description="Pixel value (0-255) of the letterbox padding (114 for the YOLO families).")
    scale: float | None = Field(None, gt=0, title="Scale", description="Multiplies (pixel - mean) / std (the YOLO families' 0-1 inputs: std 255, scale 1).")
    mean: tuple[float, float, float] | None = Field(None, title="Mean", description="Per channel, in 0-255 units and the spec's channel order.")
    std: tuple[float, float, float] | None = Field(None, title="Std", description="Per channel, in 0-255 units and the spec's channel order.")


class PostprocessSpec(BaseModel):
    """How raw outputs become the detections that are scored (empty: the head's default)."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float | None = Field(None, ge=0, le=1, title="Score threshold", description="Candidates scoring at or below this are dropped before NMS (Ultralytics val: 0.001).")
    iou: float | None = Field(None, gt=0, le=1, title="NMS IoU", description="Class-aware NMS IoU threshold; empty for heads whose model already ran NMS.")
    max_detections: int | None = Field(None, ge=1, title="Max detections", description="Detections kept per image after NMS (COCO scores at most 100).")
    classes: ClassIds | None = Field(None, title="Classes are", description="category_id (the dataset's ids, TF OD API models), index0 (0-based index into the dataset's sorted category ids: 80-class COCO models) or labelmap90 (0-based over COCO's 90-entry label map: category id = index + 1).")
    multi_label: bool | None = Field(None, title="Multi-label", description="Every class above the threshold is a candidate (the YOLO families' val, NanoDet), not only the best one (YOLOX).")
    boxes: Literal["auto", "normalised", "pixels"] | None = Field(None, title="Box units", description="yolov8/yolov5: cx, cy, w, h normalised 0-1 (TFLite exports) or in input pixels; auto tells them apart per image.")
    decoded: bool | None = Field(None, title="Outputs decoded", description="yolox: outputs already decoded to input pixels (decode_in_inference) rather than grid-relative; empty: told from the values.")
    strides: tuple[int, ...] | None = Field(None, title="Strides", description="yolox, nanodet: the feature-map strides, in output order.")
    reg_max: int | None = Field(None, ge=1, title="DFL bins - 1", description="nanodet: the distribution (DFL) has reg_max + 1 bins per box side.")
    prior_offset: float | None = Field(None, ge=0, le=1, title="Prior centre offset", description="nanodet: prior centres at (x + offset) * stride: 0 for NanoDet-Plus, 0.5 for NanoDet (GFL).")


class ModelSpec(BaseModel):
    """What the detector expects and emits; every empty field takes its head's default."""

    model_config = ConfigDict(extra="forbid")

    head: HeadName = Field("auto", title="Head", description="odapi (TF OD API outputs), ssd_postprocess (TFLite_Detection_PostProcess), yolov8 (YOLOv8/YOLO11 [1, 4+nc, N]), yolov5 ([1, N, 5+nc]), yolox, nanodet; auto: decided from the model's output names, ops and shapes where that is unambiguous.")
    input: InputSpec = Field(default_factory=InputSpec, title="Input")
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec, title="Postprocess")


_YOLO_INPUT = dict(channels="rgb", resize="letterbox", interpolation="bilinear", align="centre", pad=114.0, scale=1.0, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))
# Each head's defaults: its family's own validation settings.
HEAD_DEFAULTS: dict[str, dict] = {
    # TF Object Detection API exports: uint8 image in (preprocessing inside the graph), NMS inside,
    # detection_classes are the dataset's category ids (its label map).
    "odapi": dict(
        input=dict(channels="rgb", resize="stretch", interpolation="antialias", align="centre", pad=0.0, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        postprocess=dict(score_threshold=0.0, iou=None, max_detections=None, classes="category_id", multi_label=False,
                         boxes="normalised", decoded=True, strides=(), reg_max=None, prior_offset=None),
        source="TF OD API exporter (exporter_main_v2.py) serving signature"),
    # SSD / EfficientDet-Lite with TFLite_Detection_PostProcess: RGB stretched; (x - 128) / 128 makes
    # the uint8 build's own input quantization (1/128, 128) take the raw pixels unchanged (float
    # builds published with (x - 127.5) / 127.5 differ by < 0.4 %); NMS inside the model; classes
    # 0-based over COCO's 90-entry label map (tflite object detection examples: category = class + 1).
    "ssd_postprocess": dict(
        input=dict(channels="rgb", resize="stretch", interpolation="bilinear", align="centre", pad=0.0, scale=1.0, mean=(128.0, 128.0, 128.0), std=(128.0, 128.0, 128.0)),
        postprocess=dict(score_threshold=0.0, iou=None, max_detections=None, classes="labelmap90", multi_label=False,
                         boxes="normalised", decoded=True, strides=(), reg_max=None, prior_offset=None),
        source="TFLite object detection examples (detect.tflite), TFLite_Detection_PostProcess"),
    # Ultralytics YOLOv8 / YOLO11: ultralytics/cfg/default.yaml for val (conf 0.001, iou 0.7,
    # max_det 300), DetectionValidator.postprocess (multi_label=True), LetterBox(centre, 114), /255.
    "yolov8": dict(
        input=_YOLO_INPUT,
        postprocess=dict(score_threshold=0.001, iou=0.7, max_detections=300, classes="index0", multi_label=True,
                         boxes="auto", decoded=True, strides=(), reg_max=None, prior_offset=None),
        source="Ultralytics DetectionValidator with cfg/default.yaml (val: conf 0.001, iou 0.7, max_det 300, multi_label)"),
    # YOLOv5 val.py: conf_thres 0.001, iou_thres 0.6, max_det 300, multi_label=True; score = obj x cls.
    "yolov5": dict(
        input=_YOLO_INPUT,
        postprocess=dict(score_threshold=0.001, iou=0.6, max_detections=300, classes="index0", multi_label=True,
                         boxes="auto", decoded=True, strides=(), reg_max=None, prior_offset=None),
        source="ultralytics/yolov5 val.py (conf_thres 0.001, iou_thres 0.6, max_det 300, multi_label)"),
    # YOLOX: ValTransform (BGR 0-255, top-left letterbox, pad 114, no normalisation); yolox_base.py
    # test_conf 0.01, nmsthre 0.65; utils.postprocess: best class only, score = obj x class,
    # class-aware NMS; strides 8, 16, 32.
    "yolox": dict(
        input=dict(channels="bgr", resize="letterbox", interpolation="bilinear", align="top-left", pad=114.0, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        postprocess=dict(score_threshold=0.01, iou=0.65, max_detections=300, classes="index0", multi_label=False,
                         boxes="pixels", decoded=None, strides=(8, 16, 32), reg_max=None, prior_offset=None),
        source="Megvii YOLOX exps yolox_base.py (test_conf 0.01, nmsthre 0.65), yolox.utils.postprocess"),
    # NanoDet-Plus: BGR, stretched (keep_ratio: False), mean/std of its configs; head
    # _get_bboxes_single: multiclass_nms(score_thr 0.05, iou 0.6, max_num 100); priors (x, y) *
    # stride (NanoDet-Plus; NanoDet/GFL: (x + 0.5) * stride), DFL reg_max 7, strides 8, 16, 32, 64.
    "nanodet": dict(
        input=dict(channels="bgr", resize="stretch", interpolation="bilinear", align="centre", pad=0.0, scale=1.0, mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395)),
        postprocess=dict(score_threshold=0.05, iou=0.6, max_detections=100, classes="index0", multi_label=True,
                         boxes="pixels", decoded=True, strides=(8, 16, 32, 64), reg_max=7, prior_offset=0.0),
        source="RangiLyu/nanodet nanodet-plus configs and NanoDetPlusHead (score_thr 0.05, iou 0.6, max_num 100)"),
}


def resolve_spec(spec: ModelSpec, head: str, layout: str) -> ModelSpec:
    """``spec`` with ``head`` decided and every empty field set to ``head``'s default; ``layout``
    (``nhwc``/``nchw``) is the input tensor's, unless the spec names one."""
    defaults = HEAD_DEFAULTS[head]
    given_input = spec.input.model_dump(exclude_none=True)
    given_post = spec.postprocess.model_dump(exclude_none=True)
    return ModelSpec.model_construct(
        head=head,
        input=InputSpec.model_construct(**{**defaults["input"], "layout": layout, **given_input}),
        postprocess=PostprocessSpec.model_construct(**{**defaults["postprocess"], **given_post}),
    )


COCO_LABEL_MAP_90 = tuple(range(1, 91))  # COCO's 90-entry label map: index i is category id i + 1


def label_map(classes: str, category_ids: tuple[int, ...]) -> tuple[int, ...] | None:
    """Model class index → category id for ``postprocess.classes`` (None: the classes are the ids)."""
    return {"category_id": None, "index0": tuple(category_ids), "labelmap90": COCO_LABEL_MAP_90}[classes]


def odapi_spec() -> ModelSpec:
    """The resolved spec of a TF OD API model (what quantbench assumed before heads existed)."""
    return resolve_spec(ModelSpec(head="odapi"), "odapi", "nhwc")


def spec_summary(resolved: ModelSpec) -> dict:
    """The resolved spec as stored in reports and keys (JSON-ready, defaults included)."""
    return resolved.model_dump(mode="json")


def heads_text() -> str:
    """``quantbench heads``: each head, what it reads, its input convention and postprocessing defaults."""
    reads = {
        "odapi": "detection_boxes/scores/classes (+ num_detections, detection_masks): TF OD API exports",
        "ssd_postprocess": "TFLite_Detection_PostProcess's boxes, classes, scores, count (any order): SSD, EfficientDet-Lite",
        "yolov8": "[1, 4+nc, N] or [1, N, 4+nc]: cx, cy, w, h, class probabilities (YOLOv8, YOLO11, YOLOv5u)",
        "yolov5": "[1, N, 5+nc]: cx, cy, w, h, objectness, class probabilities (YOLOv5)",
        "yolox": "[1, N, 5+nc], grid-relative raw or decoded (YOLOX)",
        "nanodet": "[1, N, nc + 4 (reg_max + 1)]: class scores, DFL box logits (NanoDet, NanoDet-Plus)",
    }
    lines = []
    for head in HEADS:
        defaults = HEAD_DEFAULTS[head]
        post = {k: v for k, v in defaults["postprocess"].items() if v not in (None, ())}
        lines += [f"{head}: {reads[head]}",
                  "  input: " + ", ".join(f"{k} {_shown(v)}" for k, v in defaults["input"].items()),
                  "  postprocess: " + ", ".join(f"{k} {_shown(v)}" for k, v in post.items()),
                  f"  defaults from: {defaults['source']}"]
    lines.append("auto (the default): odapi by output names, ssd_postprocess by its op or outputs, yolov8 by Ultralytics "
                 "metadata or a [1, 4+nc, 8400]-like output, yolov5 by 3 anchors per cell, nanodet by 4 strides; "
                 "otherwise one line naming the candidates")
    return "\n".join(lines)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def load_spec_file(path: str | Path) -> ModelSpec:
    """A :class:`ModelSpec` from a YAML (or JSON) file.

    A file that does not parse, an unknown key or a wrong type is one :class:`QuantbenchError`
    line naming the file, the field and what is wrong."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise QuantbenchError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QuantbenchError(f"spec file {path} does not parse as YAML: {reason}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise QuantbenchError(f"spec file {path} must hold a mapping (head, input, postprocess), not a {type(document).__name__}")
    return parse_spec(document, f"spec file {path}")


def parse_spec(document: dict, where: str) -> ModelSpec:
    """Validate ``document`` as a :class:`ModelSpec`; one line naming ``where`` and the first problem."""
    try:
        return ModelSpec.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            raise QuantbenchError(f"{where}: unknown key {field!r} (known: head, input.*, postprocess.*; see 'quantbench heads')") from None
        raise QuantbenchError(f"{where}: {field}: {first['msg']} (got {first.get('input')!r})") from None
