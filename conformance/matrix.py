"""``python -m conformance matrix``: the kit run once per entry of a catalogue of implementations,
each in its own pytest process, into one page (``report.matrix``).

A catalogue is a folder of small hook files, one per implementation (``catalogue/`` in the kit's
repository). Each is loaded into its row's run as a pytest plugin (``-p FOLDER.NAME``), so it
names its implementation as a ``conftest.py`` would, with the ``pytest_conformance_impl`` hook (no
hook: the default run, torch's own losses), importing the package inside the hook. At module level
it may say what the row needs, none of it about the implementation (whose declarations stay on
the object it returns):

- ``REQUIRES``: the modules it imports; a row with one missing is "not installed", not run;
- ``ENVIRONMENT``: variables its run needs (``{"TRITON_INTERPRET": "1"}``);
- ``PROFILE``: pytest arguments that reduce its run (``("-k", "value", "--conformance-dtype",
  "float32")``) where the default run does not fit the row's time; the page shows them.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import report
from .report.matrix import BROKEN, NOT_INSTALLED, RAN, STOPPED, Row

__all__ = ["CatalogueEntry", "MatrixError", "catalogue", "run_row", "generated_line"]

GRACE = 60.0   # seconds a row interrupted at its timeout has to write its run file


class MatrixError(Exception):
    """A catalogue that cannot be read, or asked for what it does not hold."""


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    plugin: str            # the module name ``-p`` loads
    description: str
    requires: tuple = ()
    environment: tuple = ()   # (name, value) pairs
    profile: tuple = ()


def _entry(path: Path) -> CatalogueEntry:
    spec = importlib.util.spec_from_file_location(f"_conformance_catalogue_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise MatrixError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    description = " ".join((module.__doc__ or path.stem).strip().split("\n\n")[0].split())
    values = {name: getattr(module, name, default)
              for name, default in (("REQUIRES", ()), ("ENVIRONMENT", {}), ("PROFILE", ()))}
    for name, value in values.items():
        if isinstance(value, str) or not isinstance(value, (tuple, list, dict)):
            raise MatrixError(f"{path}: {name}={value!r}; expected a {'dict' if name == 'ENVIRONMENT' else 'tuple'}")
    return CatalogueEntry(path.stem, f"{path.parent.name}.{path.stem}", description, tuple(values["REQUIRES"]),
                          tuple(dict(values["ENVIRONMENT"]).items()), tuple(values["PROFILE"]))


def catalogue(folder: Path, only: Optional[list] = None) -> list:
    """The entries of ``folder`` (its ``*.py`` files but those starting with ``_``), by name, or
    the ``only`` ones in that order."""
    if not folder.is_dir():
        raise MatrixError(f"{folder}: no such folder")
    if not folder.name.isidentifier():
        raise MatrixError(f"{folder}: its name must be importable (each entry loads as {folder.name}.NAME)")
    entries = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}
    if not entries:
        raise MatrixError(f"{folder}: holds no catalogue entry (*.py)")
    unknown = [name for name in only or [] if name not in entries]
    if unknown:
        raise MatrixError(f"--only {' '.join(unknown)}: not in {folder} (it holds {', '.join(entries)})")
    return [_entry(entries[name]) for name in (only or entries)]


def _missing(entry: CatalogueEntry) -> list:
    return [name for name in entry.requires if importlib.util.find_spec(name) is None]


def _versions(entry: CatalogueEntry) -> dict:
    """The distributions that provide the modules the entry requires, with their versions."""
    providers = importlib.metadata.packages_distributions()
    dists = dict.fromkeys(d for name in entry.requires for d in providers.get(name.partition(".")[0], [name]))
    found = {}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "?"
    return found


def _command(entry: CatalogueEntry, run_file: Path) -> list:
    return [sys.executable, "-m", "pytest", "--pyargs", "conformance", "-q", "-p", "no:cacheprovider",
            "-p", entry.plugin, f"--conformance-report={run_file}", *entry.profile]


def _stop(process: subprocess.Popen) -> str:
    """Interrupt a row at its timeout as Ctrl-C would (pytest then writes the run file of the
    checks done); kill it if it does not end within ``GRACE``."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.communicate(timeout=GRACE)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


def run_row(entry: CatalogueEntry, folder: Path, *, timeout: float, keep: Optional[Path] = None) -> Row:
    """Run one entry's row in its own pytest process (``timeout`` seconds at most); ``keep``: a
    folder to keep its run file in, as NAME.json (every message and reproduce snippet)."""
    row = dict(name=entry.name, description=entry.description, profile=entry.profile)
    missing = _missing(entry)
    if missing:
        return Row(state=NOT_INSTALLED, note=f"no module {', '.join(missing)}", **row)
    row["versions"] = _versions(entry)
    env = dict(os.environ, **dict(entry.environment))
    env["PYTHONPATH"] = os.pathsep.join([str(folder.resolve().parent)] + env.get("PYTHONPATH", "").split(os.pathsep))
    with tempfile.TemporaryDirectory() as tmp:
        run_file = Path(tmp) / "run.json"
        start = time.monotonic()
        process = subprocess.Popen(_command(entry, run_file), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, state, note = process.communicate(timeout=timeout)[0], RAN, ""
        except subprocess.TimeoutExpired:
            output, state, note = _stop(process), STOPPED, f"{timeout:g} s; the checks done by then"
        seconds = time.monotonic() - start
        if keep and run_file.exists():
            shutil.copyfile(run_file, keep / f"{entry.name}.json")
        try:
            run = report.load(run_file)
        except report.ReportError:
            last = [line for line in output.splitlines() if line.strip()][-3:]
            return Row(state=STOPPED if state == STOPPED else BROKEN, seconds=seconds,
                       note=note or f"pytest exit {process.returncode}: " + " / ".join(last), **row)
    return Row(state=state, run=run, note=note, seconds=seconds, **row)


def generated_line(folder: Path, row_timeout: float) -> str:
    """When and how the page was made."""
    return (f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python -m conformance matrix "
            f"--catalogue {folder}`, each row in its own pytest process, {row_timeout:g} s at most, on "
            f"{os.cpu_count()} cpus")
