"""The run's state: what each check is (family, dtype, device, the features it needs) and what
it found, read from the test reports, so that a plain run and pytest-xdist's controller (where the
workers' reports arrive) build the same verdict and the same run report (``report.Run``)."""
from __future__ import annotations

import datetime
import importlib.metadata
import math
import platform
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

from . import bench, design, records
from .expectations import EXPECTED_TO_FAIL, Expectations
from .guards import Size
from .impl import DEFAULT_RUN_FAMILIES, DEFAULT_SPECS, Implementation, load_implementation
from .records import Check, Gap, Measured, Status, unparametrized
from .report import Benchmark, Run, regressions, timing_comparisons
from .softmax import SOFTMAX_FORMS
from .vocabulary import FORMS, dtype_name

__all__ = ["ConformanceSession", "SESSION_KEY", "item_features", "item_form", "item_size", "is_check",
           "small_to_large"]


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


# The parameters that size a check's run (a shape, a count of classes or rows, a width): the
# product of their numbers is its size, unless the run's ``size(elements, parameter)`` marker says it.
SIZE_PARAMETERS = ("shape", "num_classes", "num_rows", "width", "prefix", "extra_dims")


def _numbers(value) -> Optional[tuple]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, tuple) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def item_size(item: pytest.Item) -> Optional[Size]:
    """How large the check's run is (``guards.Size``), or None where no parameter sizes it."""
    params = _params(item)
    marker = item.get_closest_marker("size")
    if marker is not None:
        elements, name = marker.args
        return Size(elements, ((name, str(params.get(name))),))
    sized = {name: _numbers(params.get(name)) for name in SIZE_PARAMETERS}
    sized = {name: numbers for name, numbers in sized.items() if numbers}
    if not sized:
        return None
    return Size(math.prod(n for numbers in sized.values() for n in numbers),
                tuple((name, "x".join(map(str, numbers))) for name, numbers in sized.items()))


def small_to_large(items: list) -> None:
    """Each check function's sized runs in order of size, smallest first, in the places its runs
    held (stable: equal sizes keep their order), so that a run too slow at one size has had every
    smaller one judged first (``guards.HangLedger``)."""
    places: dict = {}
    for index, item in enumerate(items):
        if is_check(item):
            places.setdefault(item.nodeid.partition("[")[0], []).append(index)
    for indices in places.values():
        sizes = [item_size(items[i]) for i in indices]
        if any(sizes):
            ordered = sorted(zip(indices, sizes), key=lambda pair: pair[1].elements if pair[1] else 0)
            runs = [items[i] for i, _ in ordered]
            for index, item in zip(indices, runs):
                items[index] = item


def _family(module_name: str) -> str:
    return module_name.rpartition(".")[2].removeprefix("test_")


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return ""


@dataclass(eq=False)  # hashed by identity: pluggy registers it as a plugin
class ConformanceSession:
    """One run: the implementation, where and how it is judged, and every check's record."""

    impl: Implementation   # the first implementation named (with none named, torch's cross_entropy)
    devices: list
    contract: str
    expectations: Expectations
    seed: int = 0
    deep: bool = False   # --conformance-deep: among others, the covering designs at strength 3
    named: bool = True   # False: no implementation named, torch's own losses are judged (DEFAULT_SPECS)
    also: list = field(default_factory=list)   # the other implementations named, each of another form
    baseline: Optional[Run] = None   # --conformance-baseline
    by_nodeid: dict = field(default_factory=dict)   # nodeid -> the check's record (pytest_runtest_logreport)
    _defaults: dict = field(default_factory=dict)

    @property
    def chosen(self) -> list[Implementation]:
        """The implementations the run was given (one per form), or torch's cross_entropy."""
        return [self.impl, *self.also]

    def implementations(self, form: str) -> list[Implementation]:
        """The implementations a check of ``form`` judges: the one named of that form; with none
        named, torch's own of that form."""
        if self.named:
            return [impl for impl in self.chosen if impl.form == form]
        if form not in self._defaults:
            self._defaults[form] = [load_implementation(spec) for spec in DEFAULT_SPECS.get(form, ())]
        return self._defaults[form]

    def beyond_default_run(self, item: pytest.Item) -> bool:
        """A check of a default implementation that the default run leaves to the deep run
        (``impl.DEFAULT_RUN_FAMILIES``)."""
        impl = _params(item).get("impl")
        families = DEFAULT_RUN_FAMILIES.get(impl.spec) if isinstance(impl, Implementation) and not self.named else None
        return families is not None and _family(item.module.__name__) not in families

    def judged_by(self, item: pytest.Item) -> Implementation:
        """The implementation a check that takes the unparametrized ``impl`` fixture judges: the
        one of its form (a logits check's), else the first named."""
        return (self.implementations(item_form(item)) or [self.impl])[0]

    def describe(self, item: pytest.Item) -> None:
        """Attach what the check is to the item (its reports carry it, also from xdist workers),
        and apply its expected outcome."""
        features = item_features(item)
        impl = _params(item).get("impl") or self.judged_by(item)
        kinds = item.get_closest_marker("input_kind")
        expected = self.expectations.of(_named_by_module(item), features, impl, kinds.args if kinds else None)
        designed = item.get_closest_marker("design")
        records.attach(item.user_properties, "item", {
            "feature": _family(item.module.__name__), "design": designed.args[0] if designed else None,
            "dtype": item_dtype(item) or "-",
            "device": _params(item).get("device", "-"), "features": features, "implementation": impl.spec,
            "gap": expected.gap.to_json() if expected is not None and expected.gap else None})
        if expected is not None:
            item.add_marker(expected.marker())
            if expected.status == "xfail":
                item.stash[EXPECTED_TO_FAIL] = expected.reason

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold each phase's report into the check's record. The record starts from the setup
        report, which carries what the check is; a check whose xdist worker died arrives as a
        failed report without it, and is told by the record its setup report started."""
        info = next(iter(records.read(report.user_properties, "item")), None)
        if info is None and report.nodeid not in self.by_nodeid:  # not a check of the suite
            return
        if report.nodeid not in self.by_nodeid:
            self.by_nodeid[report.nodeid] = {**info, "duration": 0.0, "measured": [], "status": None, "reason": "",
                                              "probed": None}
        record = self.by_nodeid[report.nodeid]
        if info is None and report.failed:  # pytest-xdist's report of a check whose worker died
            record.update(status=Status.FAILED, measured=[Measured("process crash", float("inf")).to_json()],
                          reason="the implementation crashed the process (a segfault or an abort) in this check; "
                                 f"pytest-xdist replaced the worker ({self._reason(report).splitlines()[0]})")
            return
        record["duration"] += report.duration
        if report.when == "call":
            record["measured"] = records.read(report.user_properties, "measured")
            record["probed"] = next(iter(records.read(report.user_properties, "gap")), None)
            record["benchmark"] = next(iter(records.read(report.user_properties, "benchmark")), None)
            record["collectives"] = next(iter(records.read(report.user_properties, "collectives")), None)
            record["memory"] = next(iter(records.read(report.user_properties, "memory")), None)
            record["pinned"] = records.read(report.user_properties, "pinned")
        status = self._status(report, record)
        if status and (record["status"] in (None, Status.PASSED) or status == Status.FAILED):
            record["status"] = status
            record["reason"] = self._reason(report)

    @staticmethod
    def _status(report: pytest.TestReport, record: dict) -> Optional[Status]:
        if hasattr(report, "wasxfail"):
            return Status.XFAILED if report.skipped else Status.XPASSED
        if report.skipped:
            if records.read(report.user_properties, "not_run"):
                return Status.NOT_RUN
            return Status.UNSUPPORTED if record["gap"] or record["probed"] else Status.SKIPPED
        if report.failed:
            return Status.FAILED
        return Status.PASSED if report.when == "call" else None

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
        for nodeid, record in self.by_nodeid.items():
            if record["status"] is None:
                continue
            measured = [Measured.from_json(m) for m in record["measured"]]
            worst = max(measured, key=lambda m: m.ratio, default=None)
            worst_exact = max((m for m in measured if m.exact_ratio is not None), key=lambda m: m.exact_ratio,
                              default=None)
            gap = record["probed"] or record["gap"] if record["status"] == Status.UNSUPPORTED else None
            found.append(Check(
                id=nodeid, implementation=record.get("implementation", self.impl.spec), feature=record["feature"],
                dtype=record["dtype"], device=record["device"], status=record["status"],
                identity=worst.identity if worst else "", ratio=worst and worst.ratio, error=worst and worst.error,
                bound=worst and worst.bound, exact_ratio=worst_exact and worst_exact.exact_ratio,
                exact_identity=worst_exact.identity if worst_exact else "",
                exact_worst=worst_exact.exact_worst if worst_exact else "", reason=record["reason"],
                duration=record["duration"], collectives=record.get("collectives"), memory=record.get("memory"),
                gap=Gap.from_json(gap) if gap else None))
        return found

    def run(self) -> Run:
        """The run as data: every check, the benchmarks, and the environment they ran in."""
        impl = self.impl
        benchmarks = [Benchmark.from_dict(dict(record["benchmark"], id=nodeid))
                      for nodeid, record in self.by_nodeid.items() if record.get("benchmark")]
        environment = {
            "implementation": impl.spec, "input_kind": impl.input_kind, "target_kind": impl.target_kind,
            "unsupported": sorted(impl.unsupported), "deviations": sorted(impl.deviations),
            "approximations": impl.approximations, "form": impl.form,
            "also": [other.spec for other in self.also],
            "contract": self.contract, "torch": torch.__version__, "kit": _kit_version(), "devices": self.devices,
            "seed": self.seed, "design": self.designs(), "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(), "machine": bench.machine_info(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        return Run(environment=environment, checks=self.checks(), benchmarks=benchmarks)

    def designs(self) -> dict:
        """The covering designs the run's checks drew from (``design``): their strength and, per
        family judged (not every row unsupported), the cases and how many combinations of levels
        they cover."""
        ran = {record["design"] for record in self.by_nodeid.values()
               if record.get("design") and record["status"] != Status.UNSUPPORTED}
        built = [design.design(family, design.strength(self.deep), self.seed) for family in design.FACTORS
                 if family in ran]
        return {"strength": design.strength(self.deep), "seed": self.seed,
                "families": {d.family: {"factors": len(design.FACTORS[d.family]), "cases": len(d.rows),
                                        "covered": d.covered, "required": d.required} for d in built}}

    def unshown_pins(self) -> list:
        """torch's defects pinned by mechanism that covered no judged problem although the check
        that found them ran: the pin no longer says where its evidence is."""
        judged = {impl.spec: impl for impl in [*self.chosen, *(i for found in self._defaults.values() for i in found)]}
        covered = {name for record in self.by_nodeid.values() for name in record.get("pinned") or ()}

        def found_by_ran(pin, impl: Implementation) -> bool:
            return any(unparametrized(nodeid, impl.spec).endswith(pin.found_by)
                       and record.get("implementation") == impl.spec
                       and record["status"] in (Status.PASSED, Status.FAILED, Status.XFAILED)
                       for nodeid, record in self.by_nodeid.items())

        return [pin for impl in judged.values() for pin in self.expectations.pins(impl)
                if pin.name not in covered and (pin.seeds is None or self.seed in pin.seeds)
                and found_by_ran(pin, impl)]

    def header_lines(self) -> list[str]:
        """What the verdict's header says was judged, how and where."""
        lines = []
        for impl in self.chosen:
            takes = f"form {impl.form}" if impl.form in SOFTMAX_FORMS else \
                f"input {impl.input_kind}, target {impl.target_kind}"
            lines.append(f"implementation: {impl.spec} ({takes}); contract: {self.contract}; "
                         f"devices: {', '.join(self.devices)}")
            if impl.approximations:
                lines.append("declared approximations, judged by their bounds: " + ", ".join(
                    f"{name} <= {bound:g}" for name, bound in impl.approximations.items()))
        others = [other.spec for form in FORMS for other in self.implementations(form) if other not in self.chosen]
        if others:
            lines.append(f"also judged (torch's own, no implementation named): {', '.join(others)}")
        return lines

    def judged(self) -> tuple[Run, list, list]:
        """The run, its regressions against the baseline and its timing comparisons (the rule of
        ``python -m conformance report --baseline``); no regressions without a baseline."""
        run = self.run()
        if self.baseline is None:
            return run, [], []
        return run, regressions(run, self.baseline), timing_comparisons(run, self.baseline)


# Where the run keeps its session: the plugin puts it there, the suite reads it (the devices).
SESSION_KEY = pytest.StashKey[ConformanceSession]()


def _kit_version() -> str:
    try:
        return importlib.metadata.version("ce-conformance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _named_by_module(item: pytest.Item) -> str:
    """The check's id as pins and xfail files name it, its module's file first: pytest leaves the
    file out of the id of a module collected alone from outside the rootdir (``pytest --pyargs
    conformance.suite.test_log_softmax`` in the user's folder gives ``::test_extremes[...]``)."""
    module, _, check = item.nodeid.partition("::")
    return item.nodeid if module else f"{item.path.name}::{check}"
