"""The op diagnosis (issue 19) as published: its summary line and CLI text (tasks.publish.diagnosis), its
section and plots in report.html (tasks.publish.html_report, tasks.publish.plots), from a report dict
built here with a ``diagnosis`` as report.json has it: 60 ops compared, 5 swept, one with a hostile
tensor name."""
from __future__ import annotations

import copy
import html
import re
from xml.etree import ElementTree

import matplotlib
import pytest

from tasks.publish.diagnosis import diagnosis_summary, diagnosis_text, short_tensor
from tasks.publish.html_report import render_html
from tasks.publish.plots import diagnosis_error, diagnosis_recovery, render_plots
from tasks.publish.presentation import render_run_page
from tasks.store.object_store import open_store
from tests.test_plots import make_report

VARIANT, RECOVERED = "dynamic_wi8_afp32", "dynamic_wi8_afp32+float_1"
HOSTILE = "<script>alert(1)</script>"
DEPTHWISE = "model/expanded_conv_13/depthwise/depthwise;model/expanded_conv_13/depthwise/BiasAdd"
HEAD = "model/head/box/Conv2D;model/head/box/BiasAdd"
RULE = "ops whose AP-recovered CI lies above 0, most AP recovered per added byte first, until their recoveries add up to the loss"
TYPES = ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD", "RESHAPE")
# the swept ops, most AP recovered first: (index, type, tensor, shape, sqnr, own sqnr, nrmse, ap, recovered, ci, added bytes,
# build s, score s)
SWEPT = (
    (40, "DEPTHWISE_CONV_2D", DEPTHWISE, [1, 20, 20, 64], 12.1, 12.5, 0.02, 0.283, 0.082, [0.061, 0.101], 1000, 0.06, 3.1),
    (12, "CONV_2D", HOSTILE, [1, 80, 80, 32], 30.2, 31.0, 0.0041, 0.212, 0.011, [-0.004, 0.027], 9200, 0.05, 2.9),
    (51, "CONV_2D", HEAD, [1, 10, 10, 24], 18.3, 35.5, 0.012, 0.205, 0.004, [-0.006, 0.013], 6100, 0.07, 3.3),
    (33, "ADD", "model/block_10_add/add", [1, 20, 20, 64], 14.0, None, 0.018, 0.199, -0.002, [-0.01, 0.006], 0, 0.04, 3.0),
    (7, "CONV_2D", "model/Conv1/Relu6", [1, 160, 160, 16], 40.5, 40.9, 0.0012, None, None, None, 900, 0.08, 3.2),
)


def _errors() -> list[dict]:
    """60 ops in network order: SQNR falling along the network; op 0 identical to float32 (no error),
    every RESHAPE adding none; the swept ops' values as in SWEPT."""
    errors = []
    for index in range(60):
        op_type = TYPES[index % len(TYPES)]
        sqnr = None if index == 0 else round(45.0 - 0.5 * index, 1)
        errors.append({"index": index, "op_type": op_type, "tensor": f"model/op_{index}", "shape": [1, 40, 40, 32], "sqnr_db": sqnr,
                       "own_sqnr_db": None if index == 0 or op_type == "RESHAPE" else round(50.0 - 0.3 * index, 1),
                       "nrmse": None if index == 0 else round(0.001 + 0.0003 * index, 4), "quantized": op_type != "ADD"})
    for index, op_type, tensor, shape, sqnr, own, nrmse, *_ in SWEPT:
        errors[index].update(op_type=op_type, tensor=tensor, shape=shape, sqnr_db=sqnr, own_sqnr_db=own, nrmse=nrmse)
    return errors


def make_diagnosis() -> dict:
    """The ``diagnosis`` of report.json (its schema: tasks.score.diagnosis.sweep_report) for VARIANT on 100 images."""
    variant_bytes = 1_190_000
    ops = [{"index": index, "op_type": op_type, "tensor": tensor, "shape": shape, "sqnr_db": sqnr, "own_sqnr_db": own, "nrmse": nrmse,
            "ap": ap, "recovered": recovered, "ci": ci, "model_bytes": variant_bytes + added, "added_bytes": added,
            "build_s": build_s, "score_s": score_s}
           for index, op_type, tensor, shape, sqnr, own, nrmse, ap, recovered, ci, added, build_s, score_s in SWEPT]
    return {"variant": VARIANT, "reference": "annotations", "images": 100, "float32_ap": 0.289, "variant_ap": 0.201, "lost": 0.088,
            "variant_bytes": variant_bytes, "summary": "(as the score stage wrote it)", "errors": _errors(), "ops": ops,
            "recovered_variant": {"variant": RECOVERED, "ops": [40], "rule": RULE},
            "cost_s": {"numeric": 0.4, "sweep": 31.0, "ops": 5}}


def make_diagnosed_report() -> dict:
    """tests.test_plots' report with VARIANT and the recovered variant as rows, and the diagnosis."""
    report = make_report()
    int8 = report["variants"][3]
    rows = ((VARIANT, 1_190_000, 0.35, -0.062, [-0.07, -0.05]), (RECOVERED, 1_191_000, 0.409, -0.003, [-0.006, 0.0005]))
    for name, size, ap, delta, ci in rows:
        entry = copy.deepcopy(int8)
        entry.update(variant=name, model_bytes=size, delta_AP_vs_float32=delta, delta_AP_vs_float32_ci=ci, failures=[], failed_images=0)
        entry["bbox"] = {**entry["bbox"], "AP": ap}
        report["variants"].append(entry)
    report["diagnosis"] = make_diagnosis()
    return report


@pytest.fixture(scope="module")
def report() -> dict:
    return make_diagnosed_report()


@pytest.fixture(scope="module")
def page(report, tmp_path_factory) -> str:
    """report.html as the presentation task renders it (plots included), with an empty store's history."""
    page, plots = render_run_page(open_store(tmp_path_factory.mktemp("store").as_uri()), report)
    for name in ("diagnosis_error", "diagnosis_recovery"):
        assert ElementTree.fromstring(plots[f"{name}.svg"]).tag.endswith("svg") and plots[f"{name}.png"].startswith(b"\x89PNG")
    return page


def _section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}</h2>")
    return page[start:page.index("</section>", start)]


def _text(cell: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cell))


def test_the_section_sits_after_the_results_with_the_summary_and_the_recovered_variant(page):
    assert page.index("<h2>Results</h2>") < page.index("<h2>Diagnosis</h2>") < page.index("<h2>Regressions</h2>")
    section = _section(page, "Diagnosis")
    assert (f"<strong>{VARIANT} loses 0.088 AP; op 40 DEPTHWISE_CONV_2D `…/expanded_conv_13/depthwise/depthwise;…` holds 93 % of it; "
            "keeping it float: AP 0.283 at +0.0 MB</strong>") in section
    assert "(as the score stage wrote it)" not in page  # the line is worded here, from the numbers
    assert "float32 AP 0.289, dynamic_wi8_afp32 AP 0.201 (1.19 MB)" in section and "on the first 100 evaluation images" in section
    assert (f"<p>recovered variant {RECOVERED}: op 40 kept float (rule: {RULE}). Benchmarked in this run: AP 0.409, "
            "ΔAP vs float32 -0.0030 [-0.0060, +0.0005]: no significant loss, 1.19 MB.</p>") in section
    assert "cost per op (median wall s): build 0.06, run and score 3.10; numeric error 0.4 s, sweep 31.0 s" in section


def test_the_table_lists_the_swept_ops_most_recovered_first(page):
    table = re.search(r'<table class="diagnosis">(.*?)</table>', _section(page, "Diagnosis")).group(1)
    rows = [[_text(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)] for row in re.findall(r"<tr>(.*?)</tr>", table)]
    assert rows == [
        ["op", "type", "tensor", "shape", "SQNR dB", "own SQNR dB", "NRMSE", "AP with op float", "AP recovered [95% CI]", "size change kB"],
        ["40", "DEPTHWISE_CONV_2D", DEPTHWISE, "1x20x20x64", "12.1", "12.5", "0.0200", "0.283", "+0.082 [+0.061, +0.101]", "+1.0"],
        ["12", "CONV_2D", HOSTILE, "1x80x80x32", "30.2", "31.0", "0.0041", "0.212", "+0.011 [-0.004, +0.027]", "+9.2"],
        ["51", "CONV_2D", HEAD, "1x10x10x24", "18.3", "35.5", "0.0120", "0.205", "+0.004 [-0.006, +0.013]", "+6.1"],
        ["33", "ADD", "model/block_10_add/add", "1x20x20x64", "14.0", "∞", "0.0180", "0.199", "-0.002 [-0.010, +0.006]", "+0.0"],
        ["7", "CONV_2D", "model/Conv1/Relu6", "1x160x160x16", "40.5", "40.9", "0.0012", "n/a", "n/a", "+0.9"],
    ]
    assert table.count('class="n gain"') == 1  # op 40's recovery, the only CI above 0


def test_a_hostile_tensor_name_is_escaped(page):
    assert "<script" not in page.lower()
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in _section(page, "Diagnosis")


def test_both_plots_are_in_the_diagnosis_section_only(page):
    section = _section(page, "Diagnosis")
    for name in ("diagnosis_error", "diagnosis_recovery"):
        assert page.count(f'id="plot-{name}"') == 1
        assert re.search(rf'<figure id="plot-{name}"><img alt="{name}" src="data:image/svg\+xml;base64,[A-Za-z0-9+/=]+">', section)
    assert "Numeric error along the network" in section and "an op with no error (∞ dB) is a triangle near the top edge" in section
    assert "AP recovered by keeping each swept op float alone" in section
    assert "plot-diagnosis" not in _section(page, "Plots")


def test_no_diagnosis_no_section_and_no_plots():
    report = make_report()
    plots = render_plots(report)
    assert not any(name.startswith("diagnosis") for name in plots)
    assert "diagnosis" not in render_html(report, plots).lower()


def test_error_plot_draws_every_op_and_marks_the_swept_ones(report):
    figure = diagnosis_error(report)
    [ax] = figure.axes
    assert ax.get_title().startswith(f"Numeric error per op: {VARIANT} vs float32, 60 ops compared\n")
    lines = {line.get_label(): line for line in ax.get_lines()}
    errors = report["diagnosis"]["errors"]
    output = lines["output SQNR"]
    assert list(output.get_xdata()) == list(range(1, 60)) and list(output.get_ydata()) == [e["sqnr_db"] for e in errors[1:]]
    own = {x: y for label, line in lines.items() if label.startswith("own SQNR") and "no error" not in label
           for x, y in zip(line.get_xdata(), line.get_ydata())}
    assert own == {e["index"]: e["own_sqnr_db"] for e in errors if e["own_sqnr_db"] is not None}
    on_top = list(lines["own SQNR: no error (∞ dB)"].get_xdata())
    assert on_top == [e["index"] for e in errors if e["own_sqnr_db"] is None] and 33 in on_top  # op 0, the RESHAPEs, op 33
    assert list(lines["output SQNR: no error (∞ dB)"].get_xdata()) == [0]
    assert sorted(int(text.get_text()) for text in ax.texts) == [7, 12, 33, 40, 51]


def test_recovery_plot_has_one_whisker_per_defined_op(report):
    figure = diagnosis_recovery(report)
    [ax] = figure.axes
    assert ax.get_title() == (f"AP recovered by keeping one op float: {VARIANT}\n"
                              "100 images, reference: annotations; whiskers: paired bootstrap 95% CI")
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels == ["op 40 DEPTHWISE_CONV_2D", "op 12 CONV_2D", "op 51 CONV_2D", "op 33 ADD"]
    assert ax.get_xlabel().endswith("\nnot plotted (AP undefined): op 7 CONV_2D")
    drawn = []
    for container in ax.containers:
        point, _, (whisker,) = container.lines
        [[low, _], [high, _]] = whisker.get_segments()[0]
        drawn.append((point.get_xdata()[0], [round(low, 6), round(high, 6)], matplotlib.colors.to_hex(point.get_color())))
    assert drawn == [(op[8], op[9], "#1b7a1b" if op[9][0] > 0 else "#737373") for op in SWEPT[:4]]
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_label().startswith(f"AP lost by {VARIANT}: 0.088")] == [0.088]


def test_summary_names_the_op_only_when_its_recovery_is_significant():
    diagnosis = make_diagnosis()
    noisy = copy.deepcopy(diagnosis)
    noisy["ops"][0]["ci"], noisy["recovered_variant"] = [-0.01, 0.17], None
    assert diagnosis_summary(noisy) == (f"{VARIANT} loses 0.088 AP; no op recovers AP significantly on 100 images "
                                        "(no 95% CI of AP recovered lies above 0)")
    assert diagnosis_text(noisy).splitlines()[2] == ("no recovered variant made: no op recovers AP significantly "
                                                     "(no 95% CI of AP recovered lies above 0)")
    noisy["ops"][2]["ci"] = [0.001, 0.013]  # not the most recovered, but the only significant one
    assert diagnosis_summary(noisy) == (f"{VARIANT} loses 0.088 AP; op 51 CONV_2D `model/head/box/Conv2D;…` holds 5 % of it; "
                                        "keeping it float: AP 0.205 at +0.0 MB")


def test_summary_of_a_variant_that_loses_no_ap():
    same = {**make_diagnosis(), "float32_ap": 0.201, "variant_ap": 0.203, "lost": -0.002, "recovered_variant": None}
    assert diagnosis_summary(same) == f"{VARIANT} loses no AP on 100 images (AP 0.203 vs float32 0.201): nothing to recover"
    assert diagnosis_text(same).splitlines()[2] == "no recovered variant made: the variant loses no AP"
    undefined = {**same, "float32_ap": None, "lost": None}
    assert diagnosis_summary(undefined) == f"{VARIANT}: AP undefined on 100 images (float32 n/a, {VARIANT} 0.203): nothing to diagnose"


def test_cli_text_keeps_its_table():
    lines = diagnosis_text(make_diagnosis()).splitlines()
    assert lines[0] == f"{VARIANT}: AP 0.201 vs float32 0.289 (loses 0.088) on 100 images, annotations"
    assert lines[1] == diagnosis_summary(make_diagnosis())
    assert lines[2] == f"recovered variant {RECOVERED}: op 40 kept float (rule: {RULE})"
    assert lines[3].split()[:3] == ["op", "type", "tensor"]
    assert lines[4].split() == ["40", "DEPTHWISE_CONV_2D", DEPTHWISE[:40], "1x20x20x64", "12.1", "12.5", "0.0200", "0.283", "+0.082",
                                "[+0.061,", "+0.101]", "+1.0"]
    assert lines[7].split()[:6] == ["33", "ADD", "model/block_10_add/add", "1x20x20x64", "14.0", "inf"]
    assert [line.split()[0] for line in lines[4:9]] == ["40", "12", "51", "33", "7"]
    assert lines[9] == "cost per op (median wall s): build 0.06, run and score 3.10; numeric error 0.4 s, sweep 31.0 s"


@pytest.mark.parametrize(("name", "short"), [
    ("model/Conv1/Relu6", "model/Conv1/Relu6"),
    (HEAD, "model/head/box/Conv2D;…"),
    (DEPTHWISE, "…/expanded_conv_13/depthwise/depthwise;…"),
    ("a" * 50, "…" + "a" * 39),
])
def test_short_tensor_names(name, short):
    assert short_tensor(name) == short and len(short) <= 40
