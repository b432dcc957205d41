"""What ``quantbench results`` prints of a store is shown, never acted on by the terminal (issue 18,
finding 7): control characters in stored strings — an ANSI sequence that clears the screen or
retitles the window, a carriage return that overwrites a line — come out as visible ``\\xNN``."""
from __future__ import annotations

import json

from flows.cli import main
from tasks.publish.results import terminal_text

HOSTILE = "model\x1b[2J\x1b]0;owned\x07\rfake line"


def _store_with_a_hostile_report(tmp_path):
    store = tmp_path / "store"
    run = store / "runs" / "20260101T000000Z-00000000-0000"
    run.mkdir(parents=True)
    report = {"run_id": run.name, "created": "2026-01-01T00:00:00+00:00", "model": {"source": HOSTILE},
              "variants": [{"variant": "float32\x1b[31m", "bbox": {"AP": 0.5}}]}
    (run / "report.json").write_text(json.dumps(report))  # JSON escapes: \u001b, valid JSON
    return store


def test_results_list_shows_control_characters_instead_of_sending_them(capsys, tmp_path):
    store = _store_with_a_hostile_report(tmp_path)
    assert main(["results", "list", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "model\\x1b[2J\\x1b]0;owned\\x07\\x0dfake line" in out and "float32\\x1b[31m AP 0.500" in out


def test_terminal_text_keeps_newlines_tabs_and_unicode():
    assert terminal_text("a\tb\nc ΔAP ✓") == "a\tb\nc ΔAP ✓"
    assert terminal_text("\x00\x1b\x7f\x9b") == "\\x00\\x1b\\x7f\\x9b"
