"""``python -m conformance matrix`` on a small catalogue of the kit's own fixtures: a correct row
passes, a broken row fails with its finding, a row whose package is missing is listed as not
installed (and fails nothing), and the exit status says whether any row failed. Each row runs a
reduced profile (three value checks) so the whole file takes seconds per row."""
import sys
import textwrap

import pytest

from conformance import matrix, report
from conformance.__main__ import main
from suite_run import ROOT

PROFILE = ("-k", "test_value_matches_truth and float64 and 7x3")


def _entry(folder, name, body, requires=("torch",)):
    (folder / f"{name}.py").write_text(textwrap.dedent(f'''\
        """The row {name}."""
        REQUIRES = {requires!r}
        PROFILE = {PROFILE!r}
        ''') + textwrap.dedent(body))


def _hook(spec):
    module, attr = spec.split(":")
    return f'''
        def pytest_conformance_impl(config):
            from {module} import {attr}
            return {attr}
        '''


@pytest.fixture
def catalogue(tmp_path, monkeypatch):
    """A catalogue folder with a correct, a broken and a not-installed entry; runs start at the
    repository's root, whose ``fixtures`` the hooks import."""
    monkeypatch.chdir(ROOT)
    folder = tmp_path / "matrix_catalogue"
    folder.mkdir()
    _entry(folder, "correct", _hook("fixtures.correct.online_logsumexp:cross_entropy"))
    _entry(folder, "broken", _hook("fixtures.broken.small_bias:cross_entropy"))
    _entry(folder, "absent", _hook("no_such_package:cross_entropy"), requires=("no_such_package",))
    return folder


def test_matrix_page_shows_pass_fail_and_not_installed(catalogue, tmp_path):
    page, runs = tmp_path / "matrix.md", tmp_path / "runs"
    assert main(["matrix", "--catalogue", str(catalogue), "-o", str(page), "-o", str(page.with_suffix(".html")),
                 "--runs", str(runs)]) == 1
    text = page.read_text()
    assert "FAIL 3/3" in page.with_suffix(".html").read_text()
    assert sorted(p.name for p in runs.iterdir()) == ["broken.json", "correct.json"]
    assert [c.status for c in report.load(runs / "broken.json").checks] == ["failed"] * 3
    table = text[text.index("## Matrix"):text.index("## By dtype")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| pass 3 |" in rows["correct"] and "FAIL" not in rows["correct"], rows["correct"]
    assert "FAIL 3/3 (float64 3)" in rows["broken"], rows["broken"]
    assert "not installed" in rows["absent"], rows["absent"]
    brief = text[text.index("## Findings in brief"):text.index("## Findings\n")]
    assert "| broken | test_value_matches_truth | value | 3 | float64 |" in brief, brief
    findings = text[text.index("## Findings\n"):text.index("## Rows")]
    assert findings.count("| broken | test_value_matches_truth[cpu-float64-") == 3, findings
    assert "case=well_conditioned shape=7x3 dtype=float64 device=cpu, reduction=" in findings, findings
    assert "not installed: no module no_such_package" in text
    assert "reduced: -k test_value_matches_truth and float64 and 7x3" in text
    assert "2 of 3 rows judged, 1 with failing checks, 1 not installed" in text


def test_matrix_exit_status_is_0_when_no_row_fails(catalogue, tmp_path):
    """A row whose package is missing is no failure of the matrix; the HTML page is written too."""
    page = tmp_path / "matrix.html"
    assert main(["matrix", "--catalogue", str(catalogue), "--only", "correct", "absent", "-o", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "not installed" in text and "pass 3" in text


def test_matrix_refuses_an_unknown_entry_and_a_missing_folder(catalogue, tmp_path, capsys):
    assert main(["matrix", "--catalogue", str(catalogue), "--only", "nope"]) == 2
    assert "--only nope: not in" in capsys.readouterr().err
    assert main(["matrix", "--catalogue", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_row_stopped_at_its_timeout_says_so(catalogue):
    """A row past its time is interrupted, and the page says it was stopped, not that it failed."""
    entry = matrix.catalogue(catalogue, ["correct"])[0]
    row = matrix.run_row(entry, catalogue, timeout=1)
    assert row.state == "stopped at the row timeout" and row.note.startswith("1 s"), row


def test_a_loss_file_loads_from_its_package_folder_without_the_package_init(tmp_path, monkeypatch):
    """catalogue/_installed.py: a file inside a package whose ``__init__`` cannot run here (it loads
    a CUDA extension) is loaded from the package's folder, its own ``import pkg.a.b as m`` served
    from what was loaded, and the ``__init__`` never runs."""
    from catalogue._installed import load

    package = tmp_path / "cuda_only_pkg"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('no CUDA here')\n")
    (package / "ops" / "kernel.py").write_text("SCALE = 2\n")
    (package / "ops" / "loss.py").write_text("import cuda_only_pkg.ops.kernel as kernel\n\n"
                                             "def loss(x):\n    return kernel.SCALE * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("cuda_only_pkg", "cuda_only_pkg.ops", "cuda_only_pkg.ops.kernel", "cuda_only_pkg.ops.loss"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    load("cuda_only_pkg", "ops/kernel.py", "cuda_only_pkg.ops.kernel")
    assert load("cuda_only_pkg", "ops/loss.py", "cuda_only_pkg.ops.loss").loss(3) == 6
    for name in ("cuda_only_pkg", "cuda_only_pkg.ops", "cuda_only_pkg.ops.kernel", "cuda_only_pkg.ops.loss"):
        monkeypatch.delitem(sys.modules, name)


def test_matrix_of_rows_none_installed_is_a_well_formed_page(catalogue, capsys):
    """Every table's lines have the header's cells, also where no row ran (no dtype to show)."""
    assert main(["matrix", "--catalogue", str(catalogue), "--only", "absent"]) == 0
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in capsys.readouterr().out.split("\n## ")]
    assert all(len({line.replace("\\|", "").count("|") for line in table}) == 1 for table in tables if table), tables
