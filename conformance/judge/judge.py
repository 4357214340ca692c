"""The judge of one check: the run's contract chooses every bound (``tolerance``), every
comparison is also graded against ``exact``, both are recorded on the test item (``records``),
and a failure names the identity, the parameters, the worst element, the error against its
bound and a snippet that reproduces it. ``conforms`` judges every quantity of a call of any form
(``forms``); an optional capability that raises is a probed gap (``probe``)."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import pytest
import torch
from torch import Tensor

from .. import cases, forms, records, tolerance
from ..cases import Problem
from ..document import DOCUMENT_PATHS, document_path_code
from ..forms import Quantity, Show
from ..forms.logits import GRADIENT, VALUE
from ..guards import ImplementationFault
from ..impl import Implementation
from ..records import Gap, Measured
from ..reference import to_rows
from .compare import Comparison, compare_each, or_torch_nonfinite
from .snippet import Steps, indent, repro_snippet

__all__ = ["Judge", "FIRST_FAILURE", "REPRODUCE", "PINNED", "PROBED_PREFIX"]

# The judge's first failure message on a check item: a property test's example survives a
# timeout during hypothesis' shrinking (plugin).
FIRST_FAILURE = pytest.StashKey[str]()
# The reproduce snippet of the check's last failure, printed as is beside pytest's report (whose
# "E " prefixes keep the message's copy from running when pasted).
REPRODUCE = pytest.StashKey[str]()
# The known failure (``known_failures.Pin``) that covers a problem the check judged: a check that
# judged one and passed fails (plugin), the defect no longer shows where the pin says.
PINNED = pytest.StashKey[object]()
PROBED_PREFIX = "unsupported (probed): "
# What the snippet of a failure that is not a numeric comparison shows (``Judge.fail``).
SEE_MESSAGE = Show("loss", "'(see the message)'")


class Judge:
    """Per-check helper: the run's contract decides, every comparison is also graded against
    ``exact``; it records both on the test item and fails with a full message."""

    def __init__(self, item, impl: Implementation, *, contract: str = tolerance.DEFAULT_CONTRACT,
                 required: frozenset = frozenset(), pins: tuple = (), deviations: Optional[dict] = None,
                 seed: int = 0) -> None:
        self.item = item
        self.pins = pins   # torch's defects pinned by mechanism (``Expectations.pins``), at the run's seed
        self.deviations = deviations or {}   # the table's entry of each declared one (``Expectations.deviations``)
        self.seed = seed
        self.impl = impl
        self.contract = contract
        self.required = required
        self.form = forms.of(impl)
        self._covered: list = []   # (problem, the pin covering it or None), by ``_covering``

    # -- calls ----------------------------------------------------------------------------------

    def call(self, problem: Problem, **context):
        """The implementation called on the problem as its form calls it: forward, and backward
        with the problem's upstream gradient if it has one (``context``: what the form needs
        besides, such as a vocab-parallel loss's rank group)."""
        return self.form.call(self.impl, problem, **context)

    def as_supported(self, problem: Problem) -> Problem:
        """``problem`` as the implementation can be called on it: forward only where it declares
        backward unsupported."""
        return replace(problem, upstream=None) if "backward" in self.impl.unsupported else problem

    def truth(self, problem: Problem, outcome):
        """The float64 truth on exactly what the implementation was fed."""
        return self.form.truth(self.impl, problem, outcome)

    # -- bounds ---------------------------------------------------------------------------------

    def bound(self, kind: str, dtype: torch.dtype, **terms) -> Tensor:
        """The bound ``kind`` (``tolerance.BOUNDS``) under the run's contract."""
        return tolerance.bound(kind, self.contract, dtype, **terms)

    def _parity(self, problem: Problem) -> bool:
        return (self.contract == "parity" and tolerance.compute_dtype(problem.dtype) != problem.dtype
                and self.impl.input_kind == "logits" and not problem.options.variant.active)

    # -- comparisons ----------------------------------------------------------------------------

    def _record(self, comparison: Comparison, graded: Comparison) -> None:
        records.attach(self.item.user_properties, "measured", Measured(
            comparison.identity, comparison.ratio, comparison.error, comparison.bound, graded.ratio,
            f"actual={graded.actual:.5g} expected={graded.expected:.5g}").to_json())

    def _raise(self, headline: str, problem: Problem, details: str, show: Show, index: tuple = ()) -> None:
        __tracebackhide__ = True
        snippet = repro_snippet(problem, self.impl, show, index)
        message = f"[{headline}\n  params: {problem.describe()}\n{details}  reproduce:\n{indent(snippet)}"
        self.item.stash.setdefault(FIRST_FAILURE, message)
        self.item.stash[REPRODUCE] = snippet
        raise AssertionError(message)

    def _judge(self, identity: str, problem: Problem, actual: Tensor, expected: Tensor, bound: Tensor,
               exact_bound: Tensor, show: Show, also: Optional[Tensor]) -> Comparison:
        __tracebackhide__ = True
        comparison, graded = compare_each(identity, actual, expected, (bound, exact_bound), also=also)
        self._record(comparison, graded)
        self._known_failure(problem, failed=not comparison.passed)
        if not comparison.passed:
            self._raise(f"{identity}] {self.impl.spec} differs from the float64 reference beyond the "
                        f"{self.contract} bound", problem, f"  {comparison.describe()}\n", show, comparison.index)
        return comparison

    def _known_failure(self, problem: Problem, *, failed: bool) -> None:
        """The known failure that covers ``problem`` (``known_failures.Pin``), if any: recorded on
        the item (a check that judged it and passed fails, plugin), and the check's expected failure
        where it ``failed``."""
        pin = self._covering(problem)
        if pin is not None:
            self.item.stash[PINNED] = pin
            records.attach(self.item.user_properties, "pinned", pin.name)
            if failed:
                pytest.xfail(f"known failure, {pin.describe()}: {pin.reason}")

    def _covering(self, problem: Problem):
        """The pin covering ``problem``, looked for once per problem: each quantity of a call is
        judged on the same problem, and a pin's look at its data (a logsumexp over every row) costs
        as much as a bound."""
        if not self.pins:
            return None
        for seen, pin in self._covered:
            if seen is problem:
                return pin
        pin = next((pin for pin in self.pins if pin.covers(problem, self.seed)), None)
        self._covered.append((problem, pin))
        return pin

    def quantity(self, problem: Problem, q: Quantity, *, also: Optional[Tensor] = None) -> Comparison:
        """One quantity of a call against its truth, under the run's contract: under ``parity`` a
        half-precision result is held to torch's own error on what the implementation was fed
        (replacing the standard bound, or widening it where the form says so); ``also``: a result
        accepted besides the truth per element."""
        __tracebackhide__ = True
        if q.actual is None:
            self.fail(q.identity, problem, f"{q.identity.removesuffix(' gradient')} requires grad but has no "
                      "gradient after backward", show=Show(q.show.actual.partition("{at}")[0], "'a gradient'"))
        also = q.also if also is None else also
        exact = tolerance.bound(q.kind, tolerance.EXACT, problem.dtype, **q.terms)
        bound = self.bound(q.kind, problem.dtype, **q.terms, **q.declared)
        if q.counterpart is not None and self._parity(problem):
            torch_result = q.counterpart()
            parity = tolerance.parity_bound(torch_result, q.expected, problem.dtype)
            bound = torch.maximum(bound, parity) if self.form.parity_widens else parity
            also = or_torch_nonfinite(torch_result, also)
        return self._judge(q.identity, problem, q.actual, q.expected, bound, exact, q.show, also)

    def conforms(self, problem: Problem, outcome=None, *, steps: Optional[tuple] = None, **context):
        """Every quantity of the call (the loss and, unless backward is unsupported or the problem
        has no upstream gradient, each gradient) against the float64 truth; ``outcome``: a call the
        check has already made, ``steps``: how its snippet makes that call. Returns the outcome."""
        __tracebackhide__ = True
        if outcome is None:
            problem = self.as_supported(problem)
            outcome = self.call(problem, **context)
        for q in self.form.quantities(self.impl, problem, outcome, self.truth(problem, outcome)):
            self.quantity(problem, q if steps is None else replace(q, show=replace(q.show, steps=steps)))
        return outcome

    def repeats(self, problem: Problem, first, ev) -> None:
        """The call made again on identical inputs (the case built again from its recipe) gives the
        same bits as ``first`` (tt-metal runs every op twice); a loss that declares ``nondeterministic``
        is held instead to the bound of a reordered sum (``tolerance.limits``, run to run) of its value and
        logits' gradient."""
        __tracebackhide__ = True
        declared = self.declares("nondeterministic")
        fresh = cases.from_recipe(problem.case.family, problem.case.recipe, problem.device)  # the first may overwrite
        again = self.form.quantities(self.impl, problem, self.call(replace(problem, case=fresh)), ev)
        for q, second in zip(self.form.quantities(self.impl, problem, first, ev), again):
            if q.actual is None or second.actual is None:
                continue
            identity = f"{q.identity} run to run"
            if declared and q.kind in ("value", "gradient"):
                terms = {**q.terms, "first": q.actual}
                bound = self.bound(f"run to run {q.kind}", problem.dtype, **terms)
                self._judge(identity, problem, second.actual, q.actual.detach().double().cpu(), bound, bound,
                            q.show, None)
            elif not _same_bits(q.actual, second.actual):
                differ = (q.actual != second.actual) & ~(q.actual.isnan() & second.actual.isnan())
                at = tuple(differ.nonzero()[0].tolist()) if differ.dim() else ()
                self.fail(identity, problem, "two calls on identical inputs differ in their bits: "
                          f"{q.actual[at].item()!r} then {second.actual[at].item()!r} at {at or 'the scalar'} "
                          "(a loss whose sums take their terms in a varying order declares "
                          "deviations = {'nondeterministic'})", show=q.show)

    def within(self, identity: str, problem: Problem, actual: Tensor, expected: Tensor, kind: str, *,
               show: Show = VALUE, also: Optional[Tensor] = None, **terms) -> Comparison:
        """``|actual - expected|`` within the bound ``kind`` of ``tolerance.BOUNDS`` (its terms as
        keywords), under the run's contract; graded against ``exact``: a derived identity."""
        __tracebackhide__ = True
        return self._judge(identity, problem, actual, expected, self.bound(kind, problem.dtype, **terms),
                           tolerance.bound(kind, tolerance.EXACT, problem.dtype, **terms), show, also)

    def document_path(self, problem: Problem, path: str, reference: str, *, identity: str) -> Comparison:
        """The seed document's ``path`` on the case's logits against the float64 reference
        (``reference``: the code that evaluates it), both run as recorded steps."""
        __tracebackhide__ = True
        steps = Steps(self.impl, problem, truth=False)
        steps("import torch.nn.functional as F", f"reference = {reference}",
              f"path = {document_path_code(path, problem.options.reduction)}")
        ev = steps["reference"]
        return self.within(identity, problem, steps["path"], ev.loss, "document path",
                           show=steps.show("path{at}.item()", "reference.loss{at}.item()"),
                           ev=ev, logs_rounded_probability=DOCUMENT_PATHS[path][1])

    def value(self, problem: Problem, out, ev, *, identity: str = "value", expected: Optional[Tensor] = None,
              also: Optional[Tensor] = None, show: Show = VALUE) -> Comparison:
        """The loss of a logits call against the truth, judged as ``conforms`` judges it, under
        another identity or snippet, or against another exact statement of the truth (``expected``,
        such as log C)."""
        __tracebackhide__ = True
        q = forms.FORMS["logits"].quantities(self.impl, problem, replace(out, upstream=None), ev)[0]
        q = replace(q, identity=identity, show=show, expected=q.expected if expected is None else expected)
        return self.quantity(problem, q, also=also)

    def gradient(self, problem: Problem, out, ev, *, identity: str = "gradient", show: Show = GRADIENT) -> Comparison:
        """The logits' gradient against the truth, as ``value`` judges the loss."""
        __tracebackhide__ = True
        q = forms.FORMS["logits"].quantities(self.impl, problem, out, ev)[1]
        return self.quantity(problem, replace(q, identity=identity, show=show))

    def exactly(self, identity: str, problem: Problem, actual: Tensor, expected: Tensor, *,
                show: Show = VALUE) -> Comparison:
        """Results the semantics fix exactly (an empty batch's NaN or 0, an ignored row's 0)."""
        __tracebackhide__ = True
        zero = torch.zeros(())
        return self._judge(identity, problem, actual, expected, zero, zero, show, None)

    def masked_gradient(self, problem: Problem, grad: Optional[Tensor], masked: Tensor, show: Show) -> None:
        """The gradient at masked classes (``masked``, shaped like the input: a ``-inf`` logit, a
        probability 0) is exactly 0: the loss does not depend on them. A loss whose gradient is
        defined along the simplex only (``simplex_gradient``) may add one multiple of the all-ones
        vector per position: its masked classes hold exactly one value per position."""
        __tracebackhide__ = True
        if grad is None or not bool(masked.any()):
            return
        rows, where = to_rows(grad.detach().double().cpu(), class_dim=True), to_rows(masked.cpu(), class_dim=True)
        if self.declares("simplex_gradient"):
            one = rows.masked_fill(~where, -torch.inf).amax(1, keepdim=True).expand_as(rows)
            wrong = where & (rows != one)
            if bool(wrong.any()):
                at = tuple(wrong.nonzero()[0].tolist())
                self.fail("masked classes have zero gradient", problem, f"gradients {rows[at].item()!r} and "
                          f"{one[at].item()!r} on masked classes of one position (along the simplex, one "
                          "value per position)", show=show)
        elif bool((rows[where] != 0).any()):
            self.fail("masked classes have zero gradient", problem,
                      f"gradient {rows[where].abs().max().item()!r} on a -inf logit", show=show)

    def idle_rows(self, problem: Problem, out, *, conform: Optional[Callable[[object], object]] = None) -> None:
        """Rows that count for nothing (the truth's ``idle`` rows of an ``(N, C)`` call: ignored, or
        a zero-weight target), whatever their logits hold: ``conform(out)`` (``conforms`` unless
        given) judges the call against the truth, in which they are absent, then their loss ('none')
        and gradient must be exactly 0. A gradient that is not finite in an idle row holding +inf or
        NaN (torch's own: 0 times a NaN softmax, the row multiplied by 0, not masked) is the probed
        gap ``nonfinite_ignored_rows``, reported once the rest of the call is judged with those rows'
        gradient taken as 0."""
        __tracebackhide__ = True
        ev = self.truth(problem, out)
        quantities = self.form.quantities(self.impl, problem, out, ev)   # their snippets name the loss and gradient
        rows = ev.idle.nonzero()[:, 0].tolist()
        logits = out.input.detach().cpu()
        holds_nonfinite = ev.idle & (logits.isnan() | logits.isposinf()).any(1)
        grad = None if out.grad is None else out.grad.detach().cpu()
        leaking = holds_nonfinite & (False if grad is None else ~grad.isfinite().all(1))
        if bool(leaking.any()):
            row = int(leaking.nonzero()[0, 0])
            held, first = "nan" if bool(logits[row].isnan().any()) else "+inf", grad[row][~grad[row].isfinite()][0]
            out = replace(out, grad=out.grad.masked_fill(holds_nonfinite[:, None].to(out.grad.device), 0))
        (conform or (lambda judged: self.conforms(problem, judged)))(out)
        for q, name, result in zip(quantities, ("loss", "gradient"),
                                   (out.loss if problem.options.reduction == "none" else None, out.grad)):
            if result is not None:
                self.exactly(f"rows that count for nothing: {name}", problem, result[rows],
                             torch.zeros(result[rows].shape),
                             show=Show(f"{q.show.actual.partition('{at}')[0]}[{rows}]", "0.0", q.show.steps))
        if bool(leaking.any()):
            self.gap("nonfinite_ignored_rows", problem, f"an ignored row holding {held} logits gets a gradient of "
                     f"{first.item()}, not 0 (0 times a NaN softmax: the row is multiplied by 0, not masked)")

    def raised(self, identity: str, problem: Problem, message: str, *, show: Show = SEE_MESSAGE) -> None:
        """A call that raised on a valid problem (a rank of the vocab-parallel group): a failure, a
        valid call must not raise, unless it is torch's known failure where it shows."""
        __tracebackhide__ = True
        self._known_failure(problem, failed=True)
        self.fail(identity, problem, message, show=show)

    def fail(self, identity: str, problem: Problem, message: str, *,
             show: Show = SEE_MESSAGE) -> None:
        """A failure that is not a numeric comparison (shape, dtype, modified input...)."""
        __tracebackhide__ = True
        records.attach(self.item.user_properties, "measured", Measured(identity, float("inf")).to_json())
        self._raise(f"{identity}] {self.impl.spec}: {message}", problem, "", show)

    # -- declared deviations ----------------------------------------------------------------------

    def declares(self, name: str) -> bool:
        """Whether the implementation declares the deviation ``name``, for a check whose way of judging
        it changes (the table's ``allows``: ``deviations``)."""
        return name in self.deviations

    def deviation(self, name: str, problem: Problem, observed, *, identity: str = "") -> None:
        """An expected failure, with the table's reason, where the declared deviation ``name``
        explains what the check ``observed`` (``deviations``); otherwise it returns, and the check
        judges as usual. One that states the value a loss gives instead of torch's holds the
        ``observed`` result to it exactly (under the check's ``identity``): a loss that declares
        it and gives another fails."""
        __tracebackhide__ = True
        entry = self.deviations.get(name)
        if entry is None or not entry.concerns(problem):
            return
        if entry.expected is not None:
            self.exactly(identity or f"declared deviation {name}", problem, observed, torch.tensor(entry.expected))
        elif entry.explains is None or not entry.explains(observed):   # a deviation that never explains a failure
            return
        pytest.xfail(entry.reason_for(problem, observed))

    # -- capabilities ---------------------------------------------------------------------------

    def gap(self, feature: str, problem: Problem, reason: str) -> None:
        """An optional capability the implementation does not have: reported as unsupported
        (probed), or a failure if the run requires it (``--conformance-require``)."""
        __tracebackhide__ = True
        if feature in self.required:
            self.fail(feature, problem, f"required feature {feature!r} is not supported: {reason}")
        records.attach(self.item.user_properties, "gap", Gap("probed", (feature,), reason).to_json())
        pytest.skip(f"{PROBED_PREFIX}{feature}: {reason}")

    def probe(self, feature: str, problem: Problem, action: Callable[[], object], what: str):
        """``action()``, an optional transform of the implementation (double backward, forward-mode
        AD, vmap, a second backward over a retained graph). Any exception it raises makes
        ``feature`` a probed gap with the exception's first line: kernels refuse transforms in
        words of their own (an ``autograd.Function`` without ``setup_context``, vmap's "dynamic
        shape", dynamo's "Unsupported functorch tracing attempt", a compiled graph's donated
        buffers), and no list of torch's wordings keeps up with them. Only a wrong result fails
        (the caller judges it); ``--conformance-require`` makes the gap a failure. A breach of
        the calling contract (``ImplementationFault``) and a timeout still propagate."""
        __tracebackhide__ = True
        try:
            return action()
        except ImplementationFault:
            raise
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            self.gap(feature, problem, f"{what} raised {type(exc).__name__}: {first_line}")


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().reshape(-1).contiguous().view(torch.uint8), b.detach().reshape(-1).contiguous().view(torch.uint8))
