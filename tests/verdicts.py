"""Record every fixture's verdicts check by check, and compare two records: the proof that a
rebuild of the kit changed no verdict (issue "Every loss family on one judge").

    python tests/verdicts.py record before.json [--only NAME ...]   # on the old commit
    python tests/verdicts.py record after.json [--only NAME ...]    # on the new one
    python tests/verdicts.py compare before.json after.json [--renamed OLD=NEW ...]

A record maps each fixture (``fixtures.CORRECT``, ``BROKEN``, ``HOSTILE``, ``FRAMEWORKS``) to
its checks' status and error over bound, from the run report of the whole suite run on it in a
process of its own (the run the README's first command makes, with the fixture as the
implementation). ``compare`` names every check whose status changed, that appeared or went
away (ids may be renamed with ``--renamed``), and every error/bound that moved by more than a
millionth; it exits 1 if there is any. The property tests' errors are left out of that: the
examples hypothesis draws depend on the constants of the loaded source, which a rebuild moves.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_fixtures import CORRECT  # noqa: E402  (the options each correct fixture is judged with)

import fixtures  # noqa: E402  (the repository's fixtures, importable from its root)


def _options(spec: str) -> tuple:
    """The options the self-tests judge a fixture with: a correct one's from tests/test_fixtures.py,
    a framework's known findings from the xfail file beside it (optax through the JAX adapter)."""
    kind, _, name = spec.removeprefix("fixtures.").partition(".")
    if kind == "correct":
        return CORRECT.get(name, ())
    xfail = ROOT / "fixtures" / kind / f"{name}.xfail"
    found = (f"--conformance-xfail={xfail}",) if xfail.exists() else ()
    return found + ("--conformance-impl-framework=jax",) * (name == "optax_ce")


PROPERTY_TESTS = "test_properties.py::"
TOLERANCE = 1e-6


def _run(spec: str, report: Path) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--conformance-impl", spec,
               f"--conformance-report={report}", "--conformance-timeout=60", *_options(spec)]
    subprocess.run(command, cwd=ROOT, capture_output=True, timeout=1800, check=False,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    if not report.exists():
        return {"error": "no run report (the run did not finish)"}
    return {check["id"].partition("::")[2] or check["id"]: [check["status"], check["ratio"]]
            for check in json.loads(report.read_text())["checks"]}


def record(path: str, only: list) -> None:
    specs = [s for s in fixtures.CORRECT + fixtures.BROKEN + fixtures.HOSTILE + fixtures.FRAMEWORKS
             if not only or s.rpartition(".")[2] in only]
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            found[spec] = _run(spec, Path(folder) / "run.json")
            (Path(folder) / "run.json").unlink(missing_ok=True)
            print(f"{spec}: {len(found[spec])} checks", flush=True)
    Path(path).write_text(json.dumps(found, indent=0, sort_keys=True) + "\n")


def _ratio(value) -> float:
    return float(value) if value is not None else math.nan


def compare(before_path: str, after_path: str, renamed: dict) -> int:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    changes = []
    for spec in sorted(set(before) | set(after)):
        old = {renamed.get(test_id, test_id): v for test_id, v in before.get(spec, {}).items()}
        new = after.get(spec, {})
        if "error" in old or "error" in new:   # a run that did not finish (MLX's crash on a dim of size 1)
            if old.get("error") != new.get("error"):
                changes.append(f"{spec}: {old.get('error', 'finished')} -> {new.get('error', 'finished')}")
            continue
        for test_id in sorted(set(old) | set(new)):
            if test_id not in new or test_id not in old:
                changes.append(f"{spec} {test_id}: {'gone' if test_id not in new else 'new'}")
                continue
            (old_status, old_ratio), (new_status, new_ratio) = old[test_id], new[test_id]
            if old_status != new_status:
                changes.append(f"{spec} {test_id}: {old_status} -> {new_status}")
            elif not test_id.startswith(PROPERTY_TESTS):
                a, b = _ratio(old_ratio), _ratio(new_ratio)
                if not (a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE * max(abs(a), abs(b))):
                    changes.append(f"{spec} {test_id}: error/bound {a:.6g} -> {b:.6g}")
    print("\n".join(changes) or f"no verdict changed ({sum(len(v) for v in after.values())} checks)")
    return 1 if changes else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("path")
    rec.add_argument("--only", nargs="*", default=[], help="fixture names (the module's last part)")
    cmp = commands.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    cmp.add_argument("--renamed", nargs="*", default=[], help="OLD=NEW check ids")
    args = parser.parse_args()
    if args.command == "record":
        record(args.path, args.only)
        return 0
    return compare(args.before, args.after, dict(item.split("=", 1) for item in args.renamed))


if __name__ == "__main__":
    sys.exit(main())
