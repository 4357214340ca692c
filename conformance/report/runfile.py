"""The run file: what ``--conformance-report=PATH.json`` writes, a run's checks and benchmarks as
JSON, read back with both kinds of error named (``ReportError``); benchmarks come embedded in it
(when the run benchmarked) or from pytest-benchmark's ``--benchmark-json`` file."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .. import paired
from ..records import Check, ReportError, unparametrized

__all__ = ["SCHEMA", "Side", "Benchmark", "Run", "save", "load", "load_benchmarks", "writable", "id_key", "by_key"]

# 2: one benchmark per group, both sides timed in paired rounds, the ratio with its interval.
SCHEMA = "ce-conformance-run/2"


@dataclass(frozen=True)
class Side:
    """One side's rounds of a benchmark (the implementation's or torch's): times in seconds, the
    rate from the median round, the extra memory of the warm-up call."""

    median: Optional[float] = None
    min: Optional[float] = None
    bytes_per_second: Optional[float] = None
    roofline_percent: Optional[float] = None
    peak_extra_bytes: Optional[int] = None


@dataclass(frozen=True)
class Benchmark:
    """One group: the implementation and torch timed in ``pairs`` alternating rounds.
    ``ratio_to_torch`` is the median of the paired ratios, ``ratio_low`` to ``ratio_high`` its
    95 % interval (``conformance.paired``); the rounds went on until the interval was within
    ``precision`` of the ratio or the time budget was spent."""

    id: str
    group: str
    implementation: str
    op: str
    dtype: str
    device: str
    shape: str
    pairs: int = 0
    ratio_to_torch: Optional[float] = None
    ratio_low: Optional[float] = None
    ratio_high: Optional[float] = None
    precision: Optional[float] = None
    traffic_bytes: Optional[int] = None
    logits_bytes: Optional[int] = None   # linear losses: the N x V logits the composition materialises
    copy_bytes_per_second: Optional[float] = None
    impl: Side = Side()
    torch: Side = Side()

    @property
    def interval(self) -> Optional[paired.RatioInterval]:
        """The ratio and its interval; ``None`` for a run that timed nothing (``--benchmark-disable``)."""
        if self.ratio_to_torch is None:
            return None
        return paired.RatioInterval(self.ratio_to_torch, self.ratio_low, self.ratio_high, self.pairs)

    @classmethod
    def from_dict(cls, data: dict) -> "Benchmark":
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in names}
            values.update({side: Side(**values[side]) for side in ("impl", "torch") if side in values})
            return cls(**values)
        except TypeError as exc:
            raise ReportError(f"benchmark {data.get('id', '?')!r}: {exc}") from None


@dataclass(frozen=True)
class Run:
    """Everything one run found, and where it ran."""

    environment: dict
    checks: list = field(default_factory=list)
    benchmarks: list = field(default_factory=list)
    source: str = field(default="", compare=False)   # the file it was loaded from, to name a baseline

    @property
    def primary(self) -> str:
        """The implementation the run was given (the first named; torch's cross_entropy by default)."""
        return self.environment.get("implementation", "")

    def checks_by_key(self) -> dict:
        return by_key(self.checks, self.primary)

    def timed_by_key(self) -> dict:
        """The benchmarks that timed something, by ``by_key``."""
        return by_key([b for b in self.benchmarks if b.interval is not None], self.primary)

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "environment": self.environment, "checks": [c.to_json() for c in self.checks],
                "benchmarks": [dataclasses.asdict(b) for b in self.benchmarks]}

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ReportError(f"not a conformance run (schema {SCHEMA!r} expected, "
                              f"found {data.get('schema') if isinstance(data, dict) else type(data).__name__!r})")
        checks = [Check.from_json(c) for c in data["checks"]]
        return cls(environment=data.get("environment", {}), checks=checks,
                   benchmarks=[Benchmark.from_dict(b) for b in data.get("benchmarks", [])])


def save(run: Run, path: Union[str, Path]) -> None:
    Path(path).write_text(json.dumps(run.to_json(), indent=1) + "\n")


def _read_json(path: Union[str, Path]):
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None


def load(path: Union[str, Path]) -> Run:
    """Read a run file written by ``--conformance-report``."""
    data = _read_json(path)   # its errors name the file already
    try:
        return dataclasses.replace(Run.from_json(data), source=str(path))
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None


def writable(path: Union[str, Path]) -> Path:
    """``path``, checked before a run spends its time: its folder is created if missing (as
    ``--junitxml`` does) and must accept a file there; ``ReportError`` names the path otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{path}: cannot create its folder {path.parent} ({exc.strerror})") from None
    if path.is_dir():
        raise ReportError(f"{path}: is a folder, not a file")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ReportError(f"{path}: not writable")
    return path


def load_benchmarks(path: Union[str, Path]) -> list:
    """The kit's benchmarks from a pytest-benchmark JSON file (``--benchmark-json``, autosave)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return [Benchmark.from_dict(dict(b["extra_info"], id=b["fullname"], group=b["group"]))
            for b in data["benchmarks"] if "implementation" in b.get("extra_info", {})]


def by_key(items, primary: str) -> dict:
    """Checks or benchmarks by the key two runs' are matched on: ``id_key`` of the id, without the
    implementation's parameter (``records.unparametrized``) for the run's own implementation
    (``primary``: the one named, or torch's cross_entropy in a default run, whose checks then match
    a named loss's run); the other implementations' checks keep it."""
    return {id_key(unparametrized(item.id, primary) if item.implementation == primary else item.id): item
            for item in items}


def id_key(test_id: str) -> str:
    """A test id without its file's path, which depends on where pytest was started (the kit's
    test names are unique across its modules): how two runs' checks and benchmarks are matched."""
    return test_id.partition("::")[2] or test_id
