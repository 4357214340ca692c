"""The run's state: what each check is (family, dtype, device, the features it needs) and what
it found, read from the test reports, so that a plain run and pytest-xdist's controller (where the
workers' reports arrive) build the same verdict and the same run report (``report.Run``)."""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import torch

from . import bench
from .cases import dtype_name
from .checks import PROBED_PREFIX
from .expectations import UNSUPPORTED_PREFIX, Expectations
from .guards import NOT_RUN_PREFIX
from .impl import DEFAULT_SPECS, Implementation, load_implementation
from .report import Benchmark, Check, Run

__all__ = ["ITEM_PROPERTY", "ConformanceSession", "item_features", "item_form", "is_check"]

ITEM_PROPERTY = "conformance_item"
_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
_DEVICES = ("cpu", "cuda", "mps")
_FAMILIES = frozenset(path.stem.removeprefix("test_") for path in (Path(__file__).parent / "suite").glob("test_*.py"))


def is_check(item: pytest.Item) -> bool:
    return getattr(item, "module", None) is not None and item.module.__name__.startswith("conformance.suite.")


def item_form(item: pytest.Item) -> str:
    """The form of implementation a check judges: its ``form`` marker, else its module's ``FORM``."""
    marker = item.get_closest_marker("form")
    return marker.args[0] if marker else getattr(item.module, "FORM", "logits")


def _params(item: pytest.Item) -> dict:
    callspec = getattr(item, "callspec", None)
    return callspec.params if callspec else {}


def item_dtype(item: pytest.Item) -> Optional[str]:
    dtype = _params(item).get("dtype")
    return dtype_name(dtype) if isinstance(dtype, torch.dtype) else None


def item_features(item: pytest.Item) -> list[str]:
    """The feature names a check needs: its ``feature`` markers, its dtype and its reduction."""
    names = [name for marker in item.iter_markers("feature") for name in marker.args]
    params = _params(item)
    if item_dtype(item):
        names.append(item_dtype(item))
    if params.get("reduction") in ("none", "sum"):
        names.append(f"reduction_{params['reduction']}")
    return names


def _family(module_name: str) -> str:
    return module_name.rpartition(".")[2].removeprefix("test_")


def _info_from_nodeid(nodeid: str) -> Optional[dict]:
    """What a report without the kit's description (a check whose worker crashed, reported by
    pytest-xdist) can still say: its family, dtype and device from its id."""
    module = re.search(r"(?:^|/)test_(\w+)\.py::", nodeid)
    if module is None or module.group(1) not in _FAMILIES:
        return None
    params = nodeid.partition("[")[2].rstrip("]").split("-")
    return {"feature": module.group(1), "dtype": next((p for p in params if p in _DTYPE_NAMES), "-"),
            "device": next((p for p in params if p in _DEVICES), "-"), "features": []}


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return ""


@dataclass(eq=False)  # hashed by identity: pluggy registers it as a plugin
class ConformanceSession:
    """One run: the implementation, where and how it is judged, and every check's record."""

    impl: Implementation
    devices: list
    contract: str
    expectations: Expectations
    seed: int = 0
    named: bool = True   # False: no implementation named, torch's own losses are judged (DEFAULT_SPECS)
    records: dict = field(default_factory=dict)   # nodeid -> the check's record (see _record)
    _defaults: dict = field(default_factory=dict)

    def implementations(self, form: str) -> list[Implementation]:
        """The implementations a check of ``form`` judges: the named one if it has that form; with
        none named, torch's own of that form."""
        if self.impl.form == form:
            return [self.impl]
        if self.named:
            return []
        if form not in self._defaults:
            self._defaults[form] = [load_implementation(spec) for spec in DEFAULT_SPECS.get(form, ())]
        return self._defaults[form]

    def describe(self, item: pytest.Item) -> None:
        """Attach what the check is to the item (its reports carry it, also from xdist workers),
        and apply its expected outcome."""
        features = item_features(item)
        impl = _params(item).get("impl", self.impl)
        item.user_properties.append((ITEM_PROPERTY, {
            "feature": _family(item.module.__name__), "dtype": item_dtype(item) or "-",
            "device": _params(item).get("device", "-"), "features": features, "implementation": impl.spec}))
        expected = self.expectations.of(item.nodeid, features, impl)
        if expected is not None:
            item.add_marker(expected.marker())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        info = next((value for key, value in report.user_properties if key == ITEM_PROPERTY), None)
        crashed = info is None and report.failed and _info_from_nodeid(report.nodeid) is not None
        if crashed:  # pytest-xdist's report of a check whose worker died
            info = _info_from_nodeid(report.nodeid)
        if info is None:  # not a check of the suite
            return
        record = self.records.setdefault(report.nodeid, {**info, "duration": 0.0, "comparisons": [],
                                                         "status": None, "reason": ""})
        if crashed:
            record.update(status="failed", comparisons=[{"identity": "process crash", "ratio": float("inf")}],
                          reason="the implementation crashed the process (a segfault or an abort) in this check; "
                                 f"pytest-xdist replaced the worker ({self._reason(report).splitlines()[0]})")
            return
        record["duration"] += report.duration
        if report.when == "call":
            record["comparisons"] = [value for key, value in report.user_properties if key == "conformance"]
            record["benchmark"] = next((value for key, value in report.user_properties if key == "benchmark"), None)
            record["collectives"] = next((value for key, value in report.user_properties if key == "collectives"), None)
        status = self._status(report)
        if status and (record["status"] in (None, "passed") or status == "failed"):
            record["status"] = status
            record["reason"] = self._reason(report)

    @staticmethod
    def _status(report: pytest.TestReport) -> Optional[str]:
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        if report.skipped:
            reason = _skip_reason(report)
            if reason.startswith(NOT_RUN_PREFIX):
                return "not run"
            return "unsupported" if reason.startswith((UNSUPPORTED_PREFIX, PROBED_PREFIX)) else "skipped"
        if report.failed:
            return "failed"
        return "passed" if report.when == "call" else None

    @staticmethod
    def _reason(report: pytest.TestReport) -> str:
        if hasattr(report, "wasxfail"):
            return report.wasxfail
        if report.skipped:
            return _skip_reason(report)
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            return crash.message if crash else str(report.longrepr).strip()
        return ""

    def checks(self) -> list[Check]:
        found = []
        for nodeid, record in self.records.items():
            if record["status"] is None:
                continue
            comparisons = record["comparisons"]
            worst = max(comparisons, key=lambda c: c["ratio"], default={})
            graded = [c for c in comparisons if "exact_ratio" in c]
            worst_exact = max(graded, key=lambda c: c["exact_ratio"], default={})
            found.append(Check(
                id=nodeid, implementation=record.get("implementation", self.impl.spec), feature=record["feature"], dtype=record["dtype"],
                device=record["device"], status=record["status"], identity=worst.get("identity", ""),
                ratio=worst.get("ratio"), error=worst.get("error"), bound=worst.get("bound"),
                exact_ratio=worst_exact.get("exact_ratio"), exact_identity=worst_exact.get("identity", ""),
                exact_worst=worst_exact.get("exact_worst", ""), reason=record["reason"],
                duration=record["duration"], collectives=record.get("collectives")))
        return found

    def run(self) -> Run:
        """The run as data: every check, the benchmarks, and the environment they ran in."""
        impl = self.impl
        benchmarks = [Benchmark.from_dict(dict(record["benchmark"], id=nodeid))
                      for nodeid, record in self.records.items() if record.get("benchmark")]
        environment = {
            "implementation": impl.spec, "input_kind": impl.input_kind, "target_kind": impl.target_kind,
            "unsupported": sorted(impl.unsupported), "deviations": sorted(impl.deviations),
            "approximations": impl.approximations, "form": impl.form,
            "contract": self.contract, "torch": torch.__version__, "kit": _kit_version(), "devices": self.devices,
            "seed": self.seed, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "machine": bench.machine_info(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        return Run(environment=environment, checks=self.checks(), benchmarks=benchmarks)


def _kit_version() -> str:
    try:
        return importlib.metadata.version("ce-conformance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
