"""The op diagnosis (issue 19) in words, from report.json's ``diagnosis`` dict: its summary line, the
line naming the recovered variant, the cells of the swept ops' table and the text the CLI prints.
The page (:mod:`tasks.publish.html_report`) and the CLI both word it here.

Units as in the dict: AP@[.5:.95] in [0, 1]; sizes in bytes, shown in MB (10^6 bytes) or kB (10^3
bytes); SQNR in dB, None meaning no error (infinite); NRMSE a fraction of the float32 output's range.
"""
from __future__ import annotations

TENSOR_WIDTH = 40  # characters of a tensor name in the summary line and the CLI table
NO_SIGNIFICANT = "no 95% CI of AP recovered lies above 0"
OP_COLUMNS = ("op", "type", "tensor", "shape", "SQNR dB", "own dB", "NRMSE", "AP float op", "recovered [95% CI]", "size kB")  # CLI table


def _number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def short_tensor(name: str, width: int = TENSOR_WIDTH) -> str:
    """``name`` when it has at most ``width`` characters; else its first ``;``-separated part (TFLite
    joins the names of fused ops with ``;``) followed by ``;…``, that part's last characters after
    ``…`` when it is still too long: ``…/expanded_conv_13/depthwise/depthwise;…``."""
    if len(name) <= width:
        return name
    first, fused, _ = name.partition(";")
    suffix = ";…" if fused else ""
    if len(first) + len(suffix) <= width:
        return first + suffix
    return "…" + first[-(width - 1 - len(suffix)):] + suffix


def significant_ops(diagnosis: dict) -> list[dict]:
    """The swept ops whose AP-recovered 95% CI lies above 0, most AP recovered first."""
    ops = [op for op in diagnosis.get("ops") or [] if op.get("recovered") is not None and op.get("ci") and op["ci"][0] > 0]
    return sorted(ops, key=lambda op: -op["recovered"])


def diagnosis_summary(diagnosis: dict) -> str:
    """One line: the AP the variant loses, and the op whose being kept float recovers most of it
    (its share of the loss, the AP and the size change of keeping it float) when its CI lies above
    0; else that no op recovers AP significantly, or that the variant loses no AP."""
    variant, images, lost = diagnosis["variant"], diagnosis["images"], diagnosis.get("lost")
    if lost is None:
        return (f"{variant}: AP undefined on {images} images (float32 {_number(diagnosis.get('float32_ap'))}, "
                f"{variant} {_number(diagnosis.get('variant_ap'))}): nothing to diagnose")
    if lost <= 0:
        return (f"{variant} loses no AP on {images} images (AP {_number(diagnosis.get('variant_ap'))} vs float32 "
                f"{_number(diagnosis.get('float32_ap'))}): nothing to recover")
    head = f"{variant} loses {lost:.3f} AP"
    significant = significant_ops(diagnosis)
    if not significant:
        return f"{head}; no op recovers AP significantly on {images} images ({NO_SIGNIFICANT})"
    best = significant[0]
    return (f"{head}; op {best['index']} {best['op_type']} `{short_tensor(best['tensor'])}` holds {100 * best['recovered'] / lost:.0f} % "
            f"of it; keeping it float: AP {_number(best.get('ap'))} at {best['added_bytes'] / 1e6:+.1f} MB")


def recovered_text(diagnosis: dict) -> str:
    """``recovered variant dynamic_wi8_afp32+float_1: op 40 kept float (rule: …)``, or why none was made."""
    recovered = diagnosis.get("recovered_variant")
    if recovered:
        ops = recovered["ops"]
        return (f"recovered variant {recovered['variant']}: op{'s' if len(ops) > 1 else ''} {', '.join(map(str, ops))} "
                f"kept float (rule: {recovered['rule']})")
    lost = diagnosis.get("lost")
    if lost is None or lost <= 0:
        return "no recovered variant made: the variant loses no AP"
    if not significant_ops(diagnosis):
        return f"no recovered variant made: no op recovers AP significantly ({NO_SIGNIFICANT})"
    return "no recovered variant made"


def _sqnr(value: float | None, infinity: str) -> str:
    return infinity if value is None else f"{value:.1f}"


def op_cells(op: dict, infinity: str = "∞", tensor_width: int | None = None) -> tuple[str, ...]:
    """A swept op's table cells: op index, type, tensor (its first ``tensor_width`` characters when
    given), shape, SQNR dB, own SQNR dB (``infinity`` for no error), NRMSE, AP with the op kept
    float, AP recovered with its 95% CI, size change in kB; ``n/a`` for undefined values."""
    ci = "" if not op.get("ci") else f" [{op['ci'][0]:+.3f}, {op['ci'][1]:+.3f}]"
    tensor = op["tensor"] if tensor_width is None else op["tensor"][:tensor_width]
    added = op.get("added_bytes")
    return (str(op["index"]), op["op_type"], tensor, "n/a" if op.get("shape") is None else "x".join(map(str, op["shape"])),
            _sqnr(op.get("sqnr_db"), infinity), _sqnr(op.get("own_sqnr_db"), infinity), _number(op.get("nrmse"), 4),
            _number(op.get("ap")), _number(op.get("recovered"), signed=True) + ci, "n/a" if added is None else f"{added / 1e3:+.1f}")


def cost_text(diagnosis: dict) -> str:
    """``cost per op (median wall s): build 0.06, run and score 3.10; numeric error 0.4 s, sweep 31.0 s`` (wall s), or ""."""
    ops = diagnosis.get("ops") or []
    parts = []
    if ops:
        builds, scores = sorted(op["build_s"] for op in ops), sorted(op["score_s"] for op in ops)
        median_build, median_score = builds[len(builds) // 2], scores[len(scores) // 2]
        parts.append(f"cost per op (median wall s): build {median_build:.2f}, run and score {median_score:.2f}")
    cost = diagnosis.get("cost_s") or {}
    labels = (("numeric", "numeric error"), ("sweep", "sweep"))
    totals = [f"{label} {cost[key]:.1f} s" for key, label in labels if cost.get(key) is not None]
    return "; ".join(parts + ([", ".join(totals)] if totals else []))


def diagnosis_text(diagnosis: dict) -> str:
    """What ``quantbench diagnose`` prints: the AP of the variant and of float32 on the images and
    the reference; :func:`diagnosis_summary`; :func:`recovered_text`; one row per swept op, most AP
    recovered first (:data:`OP_COLUMNS`, tensor names cut to TENSOR_WIDTH characters); then the
    cost (:func:`cost_text`)."""
    context = (f"{diagnosis['variant']}: AP {_number(diagnosis.get('variant_ap'))} vs float32 {_number(diagnosis.get('float32_ap'))} "
               f"(loses {_number(diagnosis.get('lost'))}) on {diagnosis['images']} images, {diagnosis['reference']}")
    lines = [context, diagnosis_summary(diagnosis), recovered_text(diagnosis)]
    rows = [OP_COLUMNS] + [op_cells(op, "inf", TENSOR_WIDTH) for op in diagnosis.get("ops") or []]
    widths = [max(len(r[c]) for r in rows) for c in range(len(OP_COLUMNS))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in rows]
    cost = cost_text(diagnosis)
    return "\n".join(lines + ([cost] if cost else []))
