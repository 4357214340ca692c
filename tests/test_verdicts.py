"""``tests/verdicts.py compare``: the proof a rebuild changed no verdict names every change, and a
fixture's run that did not finish (MLX's crash on a dim of size 1) compares as such, not as checks."""
import json

import verdicts


def _compared(tmp_path, before: dict, after: dict, capsys) -> tuple:
    paths = []
    for name, record in (("before", before), ("after", after)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(record))
    code = verdicts.compare(*map(str, paths), renamed={})
    return code, capsys.readouterr().out


def test_a_run_that_did_not_finish_on_both_sides_is_no_change(tmp_path, capsys):
    crashed = {"error": "no run report (the run did not finish)"}
    checks = {"test_x[cpu]": ["passed", 0.5]}
    assert _compared(tmp_path, {"a": crashed, "b": checks}, {"a": crashed, "b": checks}, capsys)[0] == 0
    code, out = _compared(tmp_path, {"a": crashed}, {"a": checks}, capsys)
    assert code == 1 and "a: no run report (the run did not finish) -> finished" in out


def test_a_changed_status_or_ratio_is_named(tmp_path, capsys):
    code, out = _compared(tmp_path, {"a": {"t1": ["passed", 0.5], "t2": ["passed", 0.5]}},
                          {"a": {"t1": ["failed", 2.0], "t2": ["passed", 0.75]}}, capsys)
    assert code == 1 and "a t1: passed -> failed" in out and "a t2: error/bound 0.5 -> 0.75" in out
