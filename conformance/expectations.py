"""Every expected outcome of a check, known before it runs, in one table applied in one place
(torch OpInfo's ``DecorateInfo`` is the model): features the implementation declares
unsupported or an input kind a check is not stated for (the check is reported as unsupported,
never run), torch's own failures pinned in
``known_failures`` (by test id; the mechanism pins are the judge's, ``pins``) and the user's
``--conformance-xfail`` file (strict xfails; ``~``: not strict). A property test expected to
fail ends at its first failing example (``first_failure_ends``).

Outcomes found while a check runs are the judge's (``judge.Judge.gap``: a capability probed and
missing); what a declared deviation (``vocabulary.DEVIATIONS``) changes is its entry in ``deviations``,
which the judge applies where a check asks (``Judge.deviation``).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import pytest
from hypothesis.errors import HypothesisException

from .deviations import TABLE
from .impl import Implementation
from .known_failures import pinned_failures, pins
from .records import Gap, unparametrized
from .vocabulary import VARIANT_FEATURES

__all__ = ["Expected", "Expectations", "read_xfail_file", "first_failure_ends", "UNSUPPORTED_PREFIX", "NOT_TAKEN",
           "EXPECTED_TO_FAIL"]

UNSUPPORTED_PREFIX = "unsupported: "
NOT_TAKEN = "not taken"   # a variant beyond torch's loss that the implementation does not take
# Set on a check the table expects to fail (its xfail reason), by ``ConformanceSession.describe``.
EXPECTED_TO_FAIL = pytest.StashKey[str]()


@dataclass(frozen=True)
class Expected:
    """``status`` is ``unsupported`` (the check is skipped; ``gap`` says what is missing) or ``xfail``."""

    status: str
    reason: str
    strict: bool = True
    gap: Optional[Gap] = None

    def marker(self) -> pytest.MarkDecorator:
        if self.status == "unsupported":
            return pytest.mark.skip(reason=self.reason)
        return pytest.mark.xfail(reason=self.reason, strict=self.strict)


def read_xfail_file(path: str) -> dict:
    """Test ids (or id suffixes) of known, tracked failures, id -> (reason, strict): one per line,
    ``# reason`` after it; a leading ``~`` marks one that shows on some seeds' data only (not strict)."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise pytest.UsageError(f"--conformance-xfail={path!r}: {exc.strerror}") from None
    entries = {}
    for line in lines:
        test_id, _, reason = line.partition("#")
        test_id = test_id.strip()
        if test_id:
            strict = not test_id.startswith("~")
            entries[test_id.removeprefix("~").strip()] = (reason.strip() or f"listed in {path}", strict)
    return entries


class Expectations:
    """The table for one run: each implementation's declarations, torch's pins under the run's
    contract, and the user's xfail file."""

    def __init__(self, contract: str, xfail_path: Optional[str] = None, *, seed: int = 0) -> None:
        self.contract = contract
        self.seed = seed   # pins by test id that hold at some seeds' data only (known_failures)
        self.xfail_path = xfail_path
        self.listed = read_xfail_file(xfail_path) if xfail_path else {}
        self.matched: set = set()
        self._known: dict = {}   # implementation spec -> its pins and the xfail file's entries

    def of(self, nodeid: str, features: Iterable[str], impl: Implementation,
           input_kinds: Optional[tuple] = None) -> Optional[Expected]:
        """The expected outcome of the check ``nodeid`` of ``impl`` that needs ``features`` and,
        where it is stated for them only, one of ``input_kinds``, if any."""
        missing = tuple(name for name in features if name in impl.unsupported)
        how = NOT_TAKEN if missing and set(missing) <= VARIANT_FEATURES else "declared"
        by = f"{how} by {impl.spec}"
        if not missing and input_kinds and impl.input_kind not in input_kinds:
            missing = (f"{' or '.join(input_kinds)} input",)
            by = f"declared by {impl.spec}: input_kind={impl.input_kind!r}"
        if missing:
            reason = f"{UNSUPPORTED_PREFIX}{', '.join(missing)} ({by})"
            return Expected("unsupported", reason, gap=Gap(how, missing, reason))
        if impl.spec not in self._known:
            self._known[impl.spec] = {**pinned_failures(impl.call, self.contract, self.seed), **self.listed}
        known = self._known[impl.spec]
        ids = (nodeid, unparametrized(nodeid, impl.spec))
        test_id = next((test_id for test_id in known if any(i.endswith(test_id) for i in ids)), None)
        if test_id is None:
            return None
        self.matched.add(test_id)
        reason, strict = known[test_id]
        return Expected("xfail", reason, strict)

    def pins(self, impl: Implementation) -> tuple:
        """torch's defects pinned by mechanism for ``impl`` under the run's contract (the judge
        applies them to the problems it judges, ``known_failures.Pin``)."""
        return pins(impl.call, self.contract)

    def deviations(self, impl: Implementation) -> dict:
        """The table's entries of the deviations ``impl`` declares (the judge applies them, ``deviations``)."""
        return {name: TABLE[name] for name in impl.deviations}

    def unmatched(self) -> list[str]:
        """Ids of the xfail file that matched no collected check (the user is warned)."""
        return sorted(set(self.listed) - self.matched)


class _ExpectedFailureShown(BaseException):
    """A failure of a property test expected to fail, carried past hypothesis (which catches
    ``Exception`` to shrink it) by ``first_failure_ends``, which raises the failure itself again."""


@contextlib.contextmanager
def first_failure_ends(test: Callable) -> Iterator[None]:
    """While a hypothesis ``test`` expected to fail runs, its first failing example ends it:
    hypothesis would shrink that example, and every example after it, to report the smallest,
    but the check's verdict is its expected failure whatever the example (a tracked finding: the
    shrink took a third of a Keras loss's run). The failure propagates as raised, so pytest judges
    it against the expectation as it would the shrunk one. Hypothesis' own exceptions (an unmet
    ``assume``) pass through. ``test.hypothesis.inner_test`` is hypothesis' documented hook for
    wrapping the test it runs."""
    handle = test.hypothesis
    inner = handle.inner_test

    @functools.wraps(inner)
    def ending(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except HypothesisException:
            raise
        except (Exception, pytest.fail.Exception) as failure:   # what hypothesis shrinks
            raise _ExpectedFailureShown() from failure

    handle.inner_test = ending
    try:
        yield
    except _ExpectedFailureShown as shown:
        failure = shown.__cause__
    else:
        return
    finally:
        handle.inner_test = inner
    raise failure from failure.__cause__   # its own cause, not the carrier, shown with it
