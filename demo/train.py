"""Train the embedded demo detector (a small CenterNet) on the synthetic shapes; save a SavedModel.

    python -m demo.train [--data .cache/demo-data] [--out demo/model] [--steps 1800] [--seed 0]

Trains on ``demo.synthetic`` TRAIN (2,000 images); VAL (200) is held out for the final evaluation.
Images are stretched to 160x160 with ``PIL.Image.resize((160, 160), PIL.Image.BILINEAR)``, as the
benchmark does. Plain TensorFlow (``tf.Module``, no Keras), 1,535,335 parameters: strided 3x3
conv + batch-norm + ReLU down to stride 32, U-Net decoder with skips back to stride 4 (40x40);
heads: class heatmap (sigmoid, CenterNet focal loss), box size and centre offset (L1 at centres),
in output cells (1 cell = 4 input pixels). Hand-written Adam; flip/transpose/RGB-order augmentation.

Serving signature ``serving_default`` (TF Object Detection API layout, post-processing in graph,
TFLite builtin ops only): input ``input_tensor`` uint8 [1, 160, 160, 3] RGB 0..255; outputs
``detection_boxes`` float32 [1, 100, 4] normalised [ymin, xmin, ymax, xmax] in [0, 1],
``detection_scores`` [1, 100], ``detection_classes`` [1, 100] COCO category ids (1, 3, 7),
``num_detections`` [1] (always 100).

Then reloads ``--out``, runs it on every VAL image, converts boxes to COCO [x, y, w, h] in pixels
of the original image and prints COCO bbox AP@[.5:.95] (~0.89). ``--tflite DIR`` also writes
float32 / float16 / dynamic-range int8 .tflite files and evaluates the int8 one. Seeded and
bit-reproducible on CPU; training takes ~12 min on 2 shared CPU cores.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from demo import synthetic

SIZE = 160  # network input, pixels
STRIDE = 4
GRID = SIZE // STRIDE  # 40x40 output cells
NUM_CLASSES = len(synthetic.CATEGORIES)
CATEGORY_IDS = [c["id"] for c in synthetic.CATEGORIES]  # class index -> COCO category id
TOP_K = 100
REPO = Path(__file__).resolve().parent.parent

# Channel widths: backbone stages at strides 2, 4, 8, 16, 32; decoder at strides 16, 8, 4.
BACKBONE = [16, 32, 64, 128, 256]
DECODER = [64, 64, 48]
HEAD = 48


# ----------------------------------------------------------------------------- data

def load_image(path: Path) -> np.ndarray:
    """RGB uint8 [160, 160, 3], resized exactly as the benchmark does."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's heatmap radius (in cells) for a box of h x w cells."""
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def make_targets(boxes: list[tuple[int, float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Dense targets for one image from (class index, x0, y0, w, h) boxes normalised to [0, 1].

    Returns heat [40, 40, 3] (Gaussian peaks, exactly 1 at object centres) and
    reg [40, 40, 5] = (w, h, offset x, offset y, mask), sizes in cells, offsets in [0, 1).
    """
    heat = np.zeros((GRID, GRID, NUM_CLASSES), np.float32)
    reg = np.zeros((GRID, GRID, 5), np.float32)
    ys, xs = np.mgrid[0:GRID, 0:GRID].astype(np.float32)
    for cls, x0, y0, w, h in boxes:
        w, h = w * GRID, h * GRID
        cx, cy = x0 * GRID + w / 2, y0 * GRID + h / 2
        ix, iy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
        radius = max(0, int(gaussian_radius(h, w)))
        sigma = (2 * radius + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        g[np.abs(xs - ix) > radius] = 0
        g[np.abs(ys - iy) > radius] = 0
        heat[:, :, cls] = np.maximum(heat[:, :, cls], g)
        reg[iy, ix] = (w, h, cx - ix, cy - iy, 1.0)
    return heat, reg


def load_split(data: Path, split: synthetic.Split):
    """Images [N, 160, 160, 3] uint8, the COCO document and per-image targets."""
    ann_path = synthetic.generate(data, split)
    doc = json.loads(ann_path.read_text())
    by_image: dict[int, list] = {im["id"]: [] for im in doc["images"]}
    for a in doc["annotations"]:
        by_image[a["image_id"]].append(a)
    index = {cid: i for i, cid in enumerate(CATEGORY_IDS)}
    images = np.stack([load_image(ann_path.parent / im["file_name"]) for im in doc["images"]])
    heats, regs = [], []
    for im in doc["images"]:
        W, H = im["width"], im["height"]
        boxes = [(index[a["category_id"]], a["bbox"][0] / W, a["bbox"][1] / H, a["bbox"][2] / W, a["bbox"][3] / H)
                 for a in by_image[im["id"]]]
        heat, reg = make_targets(boxes)
        heats.append(heat)
        regs.append(reg)
    return images, doc, ann_path, np.stack(heats), np.stack(regs)


def augment(images, heat, reg, rng: np.random.Generator):
    """Random dihedral transform (flips, transpose) and RGB permutation, per batch."""
    reg = reg.copy()
    if rng.random() < 0.5:  # transpose: swap x/y and w/h
        images = images.transpose(0, 2, 1, 3)
        heat = heat.transpose(0, 2, 1, 3)
        reg = reg.transpose(0, 2, 1, 3)[..., [1, 0, 3, 2, 4]]
    for axis, off in ((2, 2), (1, 3)):  # horizontal (x), vertical (y) flip
        if rng.random() < 0.5:
            images, heat, reg = np.flip(images, axis), np.flip(heat, axis), np.flip(reg, axis).copy()
            # a centre at cell i + f moves to cell (GRID-1-i) + (1-f)
            reg[..., off] = np.where(reg[..., 4] > 0, 1.0 - reg[..., off], 0.0)
    images = images[..., rng.permutation(3)]
    return np.ascontiguousarray(images), np.ascontiguousarray(heat), np.ascontiguousarray(reg)


# ----------------------------------------------------------------------------- model

class ConvBN(tf.Module):
    """3x3 (or kxk) conv without bias + batch-norm (+ ReLU). Batch statistics while training,
    moving averages (saved, not trainable) when serving, folded into the conv weights."""

    def __init__(self, cin: int, cout: int, rng: np.random.Generator, k: int = 3, stride: int = 1, name=None):
        super().__init__(name=name)
        std = math.sqrt(2.0 / (k * k * cin))
        self.w = tf.Variable(rng.normal(0, std, (k, k, cin, cout)).astype(np.float32), name="w")
        self.gamma = tf.Variable(tf.ones([cout]), name="gamma")
        self.beta = tf.Variable(tf.zeros([cout]), name="beta")
        self.mean = tf.Variable(tf.zeros([cout]), trainable=False, name="moving_mean")
        self.var = tf.Variable(tf.ones([cout]), trainable=False, name="moving_var")
        self.stride = stride

    def __call__(self, x, training: bool, momentum: float = 0.99, eps: float = 1e-3, relu: bool = True):
        if training:
            y = tf.nn.conv2d(x, self.w, self.stride, "SAME")
            mean, var = tf.nn.moments(y, [0, 1, 2])
            self.mean.assign(momentum * self.mean + (1 - momentum) * mean)
            self.var.assign(momentum * self.var + (1 - momentum) * var)
            y = tf.nn.batch_normalization(y, mean, var, self.beta, self.gamma, eps)
        else:
            scale = self.gamma * tf.math.rsqrt(self.var + eps)
            y = tf.nn.conv2d(x, self.w * scale, self.stride, "SAME") + (self.beta - self.mean * scale)
        return tf.nn.relu(y) if relu else y


class Conv(tf.Module):
    """1x1 output conv with bias."""

    def __init__(self, cin: int, cout: int, rng: np.random.Generator, bias: float = 0.0, name=None):
        super().__init__(name=name)
        self.w = tf.Variable(rng.normal(0, 0.01, (1, 1, cin, cout)).astype(np.float32), name="w")
        self.b = tf.Variable(tf.fill([cout], bias), name="b")

    def __call__(self, x):
        return tf.nn.conv2d(x, self.w, 1, "SAME") + self.b


def upsample(x):
    return tf.image.resize(x, [x.shape[1] * 2, x.shape[2] * 2], method="bilinear")


class CenterNet(tf.Module):
    def __init__(self, seed: int):
        super().__init__(name="centernet")
        rng = np.random.default_rng(seed)
        b = BACKBONE
        self.down = [ConvBN(3, b[0], rng, stride=2)]  # stride 2
        for cin, cout in zip(b[:-1], b[1:]):  # strides 4, 8, 16, 32
            self.down += [ConvBN(cin, cout, rng, stride=2), ConvBN(cout, cout, rng)]
        # decoder: upsample x2, concatenate the backbone feature at that stride, 3x3 conv
        self.up = []
        cin = b[-1]
        for skip, cout in zip(b[-2:0:-1], DECODER):
            self.up.append(ConvBN(cin + skip, cout, rng))
            cin = cout
        self.head = ConvBN(cin, HEAD, rng)
        self.heat = Conv(HEAD, NUM_CLASSES, rng, bias=-math.log((1 - 0.1) / 0.1))  # prior 0.1
        self.reg = Conv(HEAD, 4, rng)  # w, h (cells), offset x, y

    def features(self, images, training: bool):
        """images uint8 [B, 160, 160, 3] -> heat logits [B, 40, 40, 3], reg [B, 40, 40, 4]."""
        x = tf.cast(images, tf.float32) * (2.0 / 255.0) - 1.0
        x = self.down[0](x, training)
        skips = []
        for i in range(1, len(self.down), 2):
            x = self.down[i + 1](self.down[i](x, training), training)
            skips.append(x)
        for conv, skip in zip(self.up, skips[-2::-1]):
            x = conv(tf.concat([upsample(x), skip], axis=-1), training)
        x = self.head(x, training)
        return self.heat(x), self.reg(x)

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="input_tensor")])
    def serve(self, input_tensor):
        logits, reg = self.features(input_tensor, training=False)
        heat = tf.sigmoid(logits)
        peaks = tf.nn.max_pool2d(heat, 3, 1, "SAME")
        heat = heat * tf.cast(tf.equal(heat, peaks), tf.float32)
        scores, index = tf.math.top_k(tf.reshape(heat, [1, GRID * GRID * NUM_CLASSES]), k=TOP_K)
        index = index[0]
        cls = tf.math.floormod(index, NUM_CLASSES)
        cell = tf.math.floordiv(index, NUM_CLASSES)
        cy = tf.cast(tf.math.floordiv(cell, GRID), tf.float32)
        cx = tf.cast(tf.math.floormod(cell, GRID), tf.float32)
        r = tf.gather(tf.reshape(reg, [GRID * GRID, 4]), cell)
        cx = (cx + r[:, 2]) / GRID
        cy = (cy + r[:, 3]) / GRID
        hw, hh = r[:, 0] / (2 * GRID), r[:, 1] / (2 * GRID)
        boxes = tf.clip_by_value(tf.stack([cy - hh, cx - hw, cy + hh, cx + hw], axis=-1), 0.0, 1.0)
        classes = tf.gather(tf.constant(CATEGORY_IDS, tf.float32), cls)
        return {
            "detection_boxes": boxes[None],
            "detection_scores": scores,
            "detection_classes": classes[None],
            "num_detections": tf.constant([float(TOP_K)], tf.float32),
        }


def losses(model: CenterNet, images, heat_t, reg_t):
    logits, reg = model.features(images, training=True)
    pos = tf.cast(tf.equal(heat_t, 1.0), tf.float32)
    mask = reg_t[..., 4:5]
    num = tf.maximum(tf.reduce_sum(mask), 1.0)
    p = tf.sigmoid(logits)
    log_p, log_1p = tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)
    focal = -(pos * (1 - p) ** 2 * log_p + (1 - pos) * (1 - heat_t) ** 4 * p**2 * log_1p)
    focal = tf.reduce_sum(focal) / num
    size = tf.reduce_sum(mask * tf.abs(reg[..., 0:2] - reg_t[..., 0:2])) / num
    offset = tf.reduce_sum(mask * tf.abs(reg[..., 2:4] - reg_t[..., 2:4])) / num
    return focal, size, offset


# ----------------------------------------------------------------------------- evaluation

def coco_ap(gt_path: Path, doc: dict, images: np.ndarray, detect) -> float:
    """COCO bbox AP@[.5:.95] of ``detect(uint8 [1,160,160,3]) -> (boxes, scores, classes)``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for im, pixels in zip(doc["images"], images):
        boxes, scores, classes = detect(pixels[None])
        W, H = im["width"], im["height"]
        for (y0, x0, y1, x1), s, c in zip(boxes, scores, classes):
            results.append({"image_id": im["id"], "category_id": int(round(float(c))),
                            "bbox": [float(x0) * W, float(y0) * H, float(x1 - x0) * W, float(y1 - y0) * H],
                            "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def savedmodel_detector(path: Path):
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]

    def detect(x):
        out = fn(input_tensor=tf.constant(x))
        return out["detection_boxes"][0].numpy(), out["detection_scores"][0].numpy(), out["detection_classes"][0].numpy()
    return detect


def tflite_detector(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")

    def detect(x):
        out = runner(input_tensor=x)
        return out["detection_boxes"][0], out["detection_scores"][0], out["detection_classes"][0]
    return detect


def convert(saved_model: Path, out_dir: Path) -> dict[str, Path]:
    """float32, float16 and dynamic-range int8 .tflite (TFLite builtin ops only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for variant in ("float32", "float16", "int8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        paths[variant] = out_dir / f"demo_{variant}.tflite"
        paths[variant].write_bytes(converter.convert())
    return paths


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".cache" / "demo-data")
    parser.add_argument("--out", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--tflite", type=Path, default=None, help="also convert to .tflite here and evaluate int8")
    args = parser.parse_args(argv)

    tf.random.set_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(args.seed)

    t0 = time.time()
    images, _, _, heats, regs = load_split(args.data, synthetic.TRAIN)
    val_images, val_doc, val_path, _, _ = load_split(args.data, synthetic.VAL)
    print(f"data: {len(images)} train, {len(val_images)} val images ({time.time() - t0:.1f} s)")

    model = CenterNet(args.seed)
    params = model.trainable_variables
    print(f"trainable parameters: {sum(int(np.prod(v.shape)) for v in params):,}")

    # Adam, written out: m, v moments per variable, bias-corrected.
    beta1, beta2, eps = 0.9, 0.999, 1e-7
    m = [tf.Variable(tf.zeros_like(v)) for v in params]
    v2 = [tf.Variable(tf.zeros_like(v)) for v in params]
    step_var = tf.Variable(0.0)
    warmup = max(1, min(100, args.steps // 10))

    @tf.function
    def train_step(x, heat_t, reg_t):
        step_var.assign_add(1.0)
        t = step_var
        lr = args.lr * tf.minimum(t / warmup, 0.5 * (1 + tf.cos(math.pi * tf.minimum(t / args.steps, 1.0))))
        with tf.GradientTape() as tape:
            focal, size, offset = losses(model, x, heat_t, reg_t)
            loss = focal + 0.1 * size + offset
        grads = tape.gradient(loss, params)
        corr = tf.sqrt(1 - beta2**t) / (1 - beta1**t)
        for var, g, mi, vi in zip(params, grads, m, v2):
            mi.assign(beta1 * mi + (1 - beta1) * g)
            vi.assign(beta2 * vi + (1 - beta2) * g * g)
            var.assign_sub(lr * corr * mi / (tf.sqrt(vi) + eps))
        return focal, size, offset

    t_train = time.time()
    order = np.empty(0, np.int64)
    running = np.zeros(3)
    for step in range(1, args.steps + 1):
        if len(order) < args.batch:
            order = np.concatenate([order, rng.permutation(len(images))])
        idx, order = np.sort(order[: args.batch]), order[args.batch:]
        x, h, r = augment(images[idx], heats[idx], regs[idx], rng)
        running += [float(t) for t in train_step(tf.constant(x), tf.constant(h), tf.constant(r))]
        if step % 50 == 0 or step == args.steps:
            n = 50 if step % 50 == 0 else step % 50
            print(f"step {step:5d}  focal {running[0] / n:.3f}  size {running[1] / n:.3f}  "
                  f"offset {running[2] / n:.3f}  {time.time() - t_train:6.0f} s", flush=True)
            running[:] = 0
    train_time = time.time() - t_train

    args.out.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(model, str(args.out), signatures={"serving_default": model.serve.get_concrete_function()})
    print(f"saved {args.out} ({dir_size(args.out) / 1e6:.2f} MB)")

    ap = coco_ap(val_path, val_doc, val_images, savedmodel_detector(args.out))
    print(f"VAL bbox AP@[.5:.95] (SavedModel, float32): {ap:.4f}")
    if args.tflite is not None:
        paths = convert(args.out, args.tflite)
        base = paths["float32"].stat().st_size
        for variant, path in paths.items():
            size = path.stat().st_size
            print(f"{path}: {size / 1e6:.2f} MB ({size / base:.2f}x float32)")
        ap_int8 = coco_ap(val_path, val_doc, val_images, tflite_detector(paths["int8"]))
        print(f"VAL bbox AP@[.5:.95] (int8 dynamic-range .tflite): {ap_int8:.4f}")
    print(f"training wall time: {train_time / 60:.1f} min ({args.steps} steps, batch {args.batch})")


if __name__ == "__main__":
    main()
