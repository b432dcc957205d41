"""The op diagnosis (issue 19) as text: the summary line and the table of the swept ops."""
from __future__ import annotations

from tasks.score.diagnosis import Sweep


def _number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def diagnosis_text(sweep: Sweep) -> str:
    """A summary line (AP lost); the op recovering most and its share of the loss (only when its CI
    lies above 0 and the variant lost AP; else a line saying why not); one row per swept op, most
    AP recovered first: op index, type, output tensor, shape, SQNR and own SQNR (dB), NRMSE, AP
    with the op kept float, AP recovered [95 % CI], size change (kB); then the median cost of one
    op (build, run and score)."""
    lost = None if sweep.float32_ap is None or sweep.variant_ap is None else sweep.float32_ap - sweep.variant_ap
    lines = [f"{sweep.variant}: AP {_number(sweep.variant_ap)} vs float32 {_number(sweep.float32_ap)} "
             f"(loses {_number(lost)}) on {sweep.images} images, {sweep.reference}"]
    best = sweep.rows[0] if sweep.rows else None
    significant = best is not None and best.ci is not None and best.ci[0] > 0
    if significant and lost and lost > 0:
        lines.append(f"op {best.error.index} {best.error.op_type} {best.error.tensor} holds {best.recovered / lost:.0%} of it; "
                     f"keeping it float: AP {_number(best.ap)} at {(best.model_bytes - sweep.variant_bytes) / 1e6:+.2f} MB")
    elif best is not None:
        lines.append("the variant loses no AP here: nothing to recover" if significant else
                     f"no op recovers AP significantly on {sweep.images} images (no 95% CI of AP recovered lies above 0)")
    header = ("op", "type", "tensor", "shape", "SQNR dB", "own dB", "NRMSE", "AP float op", "recovered [95% CI]", "size kB")
    rows = [header]
    for row in sweep.rows:
        ci = "" if row.ci is None else f" [{row.ci[0]:+.3f}, {row.ci[1]:+.3f}]"
        error = row.error
        rows.append((str(error.index), error.op_type, error.tensor[:40], "x".join(map(str, error.shape)), f"{error.sqnr_db:.1f}",
                     f"{error.own_sqnr_db:.1f}", f"{error.nrmse:.4f}", _number(row.ap), _number(row.recovered, signed=True) + ci,
                     f"{(row.model_bytes - sweep.variant_bytes) / 1e3:+.1f}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in rows]
    if sweep.rows:
        builds, scores = sorted(r.build_s for r in sweep.rows), sorted(r.score_s for r in sweep.rows)
        lines.append(f"cost per op (median wall s): build {builds[len(builds) // 2]:.2f}, run and score {scores[len(scores) // 2]:.2f}")
    return "\n".join(lines)
