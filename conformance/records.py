"""A run's results as typed records with JSON both ways (pytest's ``reports.py`` keeps its test
reports so): one comparison the judge made, a capability a check found missing, and one check.

Everything a check says about itself travels on its test item under one ``user_properties``
key, ``PROPERTY``, as ``(kind, payload)`` records (``attach``, ``read``): a plain run and
pytest-xdist's controller, where the workers' reports arrive, read the same records, and nothing
downstream parses a reason string or a test id.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Optional

__all__ = ["PROPERTY", "Status", "STATUSES", "Measured", "Gap", "Check", "ReportError", "attach", "read",
           "unparametrized"]

PROPERTY = "conformance"


class ReportError(Exception):
    """A run file, a benchmark file or a record in one that cannot be read as one."""


class Status(str, Enum):
    """A check's outcome. ``not run``: taken to hang after earlier runs of its check ran past the
    time limit (``guards.HangLedger``); ``unsupported``: a feature declared missing, or an optional
    capability probed and missing (``Check.gap`` says which); ``skipped``: not applicable here."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not run"
    UNSUPPORTED = "unsupported"
    XFAILED = "xfailed"
    XPASSED = "xpassed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(status.value for status in Status)
GAP_KINDS = ("declared", "not taken", "probed")


def _number(value) -> Optional[float]:
    """JSON has no inf or nan: they travel as strings."""
    return float(value) if isinstance(value, str) else value


def _json_number(value: Optional[float]):
    return str(value) if value is not None and not math.isfinite(value) else value


@dataclass(frozen=True)
class Measured:
    """One comparison of the judge: the worst element's error over its bound (``ratio``, inf for a
    failure that is not numeric), and over the ``exact`` bound (the accuracy grade)."""

    identity: str
    ratio: float
    error: Optional[float] = None
    bound: Optional[float] = None
    exact_ratio: Optional[float] = None
    exact_worst: str = ""

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": _json_number(self.ratio), "error": _json_number(self.error),
                "bound": _json_number(self.bound), "exact_ratio": _json_number(self.exact_ratio)}

    @classmethod
    def from_json(cls, data: dict) -> "Measured":
        return cls(**{**data, **{name: _number(data.get(name)) for name in ("ratio", "error", "bound", "exact_ratio")}})


@dataclass(frozen=True)
class Gap:
    """Why a check is unsupported: ``declared`` by the implementation (its ``unsupported`` set,
    the input kind it takes), ``not taken`` (a variant beyond torch's loss it has no keyword for)
    or ``probed`` (an optional transform raised); ``features`` names what is missing, ``reason``
    says it in words (for a probed gap, the error's first line)."""

    how: str
    features: tuple
    reason: str

    def __post_init__(self) -> None:
        if self.how not in GAP_KINDS:
            raise ReportError(f"gap how={self.how!r}: expected one of {GAP_KINDS}")
        object.__setattr__(self, "features", tuple(self.features))

    def to_json(self) -> dict:
        return {"how": self.how, "features": list(self.features), "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict) -> "Gap":
        return cls(how=data["how"], features=tuple(data["features"]), reason=data["reason"])


@dataclass(frozen=True)
class Check:
    """One check of the run. ``ratio`` is the worst measured error over its bound (``identity``
    names that comparison); ``None`` where the check compared nothing."""

    id: str
    implementation: str
    feature: str
    dtype: str
    device: str
    status: Status
    identity: str = ""
    ratio: Optional[float] = None
    error: Optional[float] = None
    bound: Optional[float] = None
    exact_ratio: Optional[float] = None   # the worst error over the ``exact`` bound: the accuracy grade
    exact_identity: str = ""
    exact_worst: str = ""
    reason: str = ""
    duration: float = 0.0
    # Vocab parallel: rank 0's collectives in one call, {"world_size": W, "forward": [count, bytes],
    # "backward": [count, bytes]} (conformance.distributed counts them).
    collectives: Optional[dict] = None
    # The memory checks: {"measure": "peak" (forward and backward of one call) or "growth" (left
    # allocated by ``test_memory.CALLS`` calls), "bytes": measured, "limit": the bound it is held
    # to (None: reported, not judged), "logits_bytes": the N x V logits of a linear case}.
    memory: Optional[dict] = None
    gap: Optional[Gap] = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "status", Status(self.status))
        except ValueError:
            raise ReportError(f"check {self.id!r}: status={self.status!r}; expected one of {STATUSES}") from None

    @property
    def probed(self) -> bool:
        """An optional capability found missing while the check ran (not declared)."""
        return self.gap is not None and self.gap.how == "probed"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "status": self.status.value, "ratio": _json_number(self.ratio),
                "error": _json_number(self.error), "bound": _json_number(self.bound),
                "exact_ratio": _json_number(self.exact_ratio), "gap": self.gap and self.gap.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> "Check":
        try:
            return cls(**{**data, **{name: _number(data.get(name))
                                     for name in ("ratio", "error", "bound", "exact_ratio")},
                          "gap": Gap.from_json(data["gap"]) if data.get("gap") else None})
        except (TypeError, KeyError) as exc:
            raise ReportError(f"malformed check {data.get('id', '?')!r}: {exc}") from None


def unparametrized(test_id: str, spec: str) -> str:
    """``test_id`` without the parameter of the implementation ``spec`` names: a check that judges
    several implementations of its form (torch's two logits losses in the default run) carries
    the implementation's name among its parameters; pins, xfail files and baselines name a check
    without it."""
    name = re.escape(spec.rpartition(":")[2])
    return re.sub(rf"\[{name}-|-{name}(?=[-\]])", lambda found: "[" if found[0][0] == "[" else "", test_id, count=1)


def attach(user_properties: list, kind: str, payload) -> None:
    """Add a record of ``kind`` (``item``, ``measured``, ``gap``, ``benchmark``, ``collectives``, ``memory``)
    to a test item's ``user_properties``: JSON, so that it crosses from an xdist worker."""
    user_properties.append((PROPERTY, {"kind": kind, "payload": payload}))


def read(user_properties, kind: str) -> list:
    """The payloads of ``kind`` attached to a test item, in order."""
    return [value["payload"] for key, value in user_properties
            if key == PROPERTY and isinstance(value, dict) and value.get("kind") == kind]
