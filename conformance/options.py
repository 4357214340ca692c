"""The kit's options, each on the command line (``--conformance-NAME``, a few with a short alias)
and in the ini file (``conformance_NAME``), each value parsed and validated by a small function
that raises a clear usage error; and the hypothesis profiles the property tests run under."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings

from . import adapters, distributed, paired
from .tolerance import CONTRACTS, DEFAULT_CONTRACT
from .vocabulary import DEVICES, DTYPE_NAMES, PROBED_FEATURES

__all__ = ["OPTIONS", "Option", "DEFAULT_TIMEOUT", "DEFAULT_WORLD_SIZES",
           "DEFAULT_BENCH_ROUNDS", "DEFAULT_BENCH_PRECISION", "DEFAULT_BENCH_TIME", "HYPOTHESIS_CI_PROFILE",
           "MARKERS", "add_options", "add_aliases", "resolve", "register_markers", "devices", "world_sizes",
           "round_plan", "property_seed", "load_hypothesis_profile"]

# A check takes well under a second; 30 s is 10x the slowest (XOR training) on a loaded 2-core
# machine (see plugin: after a few timeouts the remaining checks fail at once).
DEFAULT_TIMEOUT = 30.0

# The vocab-parallel checks' world sizes: an even and an odd number of classes per rank, and four
# ranks (one of them holding a single class in the uneven split) on a 2-core machine.
DEFAULT_WORLD_SIZES = (2, 4)

# Benchmarks: at least 10 paired rounds (an interval from the 2nd to the 9th ratio), then until the
# ratio's 95 % interval is within +-3 % of it or the benchmark's share of 140 s is spent: the
# twelve groups of the cpu shapes, their inputs and warm-ups then fit in three minutes. +-3 % is a
# third of the half width at which a 1.5x slowdown still stands out against the default 25 %
# threshold (paired.compare).
DEFAULT_BENCH_ROUNDS = 10
DEFAULT_BENCH_PRECISION = 0.03
DEFAULT_BENCH_TIME = 140.0

# Hypothesis profiles of the property-based suite (test_properties.py). "conformance-ci" is loaded
# by default: a fixed, replayable set of examples that keeps the run short; "conformance-deep"
# searches 500 fresh examples per test (--hypothesis-profile=conformance-deep). Neither runs the
# explain phase: its tracing makes a failing test many times slower to report, and its output
# (which lines ran) says nothing the judge's message does not. A failing example prints the
# judge's message with its repro snippet and hypothesis' reproduce blob.
HYPOTHESIS_CI_PROFILE = "conformance-ci"
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
hypothesis_settings.register_profile(
    HYPOTHESIS_CI_PROFILE, derandomize=True, database=None, max_examples=30, deadline=None, print_blob=True,
    phases=_PHASES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
hypothesis_settings.register_profile(
    "conformance-deep", parent=hypothesis_settings.get_profile(HYPOTHESIS_CI_PROFILE), max_examples=500,
    derandomize=False)


# Each parser below takes the text of one value (from the command line or the ini file) and
# raises ValueError saying what it expected; ``Option.value`` names the option in the usage error.


def _one_of(choices):
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return parse


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("expected an integer") from None


def _shape(value: str) -> tuple:
    n, sep, c = value.lower().partition("x")
    if not (sep and n.isdigit() and c.isdigit() and int(n) > 0 and int(c) > 0):
        raise ValueError("expected NxC, e.g. 4096x32000")
    return int(n), int(c)


def _linear_shape(value: str) -> tuple:
    parts = value.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError("expected NxHxV, e.g. 4096x2048x32000")
    return tuple(int(p) for p in parts)


def _at_least_zero(what: str):
    """A parser of a number >= 0 (NaN and words refused), described as ``what``."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0:
            raise ValueError(f"expected {what} >= 0")
        return number
    return parse


def _rounds(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= paired.MAX_PAIRS:
        raise ValueError(f"expected an integer from 1 to {paired.MAX_PAIRS}")
    return int(value)


def _world_size(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError("expected a number of ranks >= 1")
    return int(value)


def _probed_feature(value: str) -> str:
    if value not in PROBED_FEATURES:
        raise ValueError(f"expected one of {', '.join(PROBED_FEATURES)} (the capabilities the kit probes; core "
                         "semantics are always required)")
    return value


@dataclass(frozen=True)
class Option:
    """``--conformance-NAME`` on the command line (``alias`` too, where no other plugin or conftest
    has taken it), ``conformance_NAME`` in the ini file (pytest.ini, ``[tool.pytest.ini_options]``):
    the command line wins, then the ini file, then ``default``. Read as ``config.getoption(dest)``."""

    name: str
    help: str
    parse: Optional[Callable[[str], Any]] = None   # None: a flag (store_true)
    default: Any = None
    metavar: Optional[str] = None
    repeatable: bool = False
    alias: Optional[str] = None

    @property
    def dest(self) -> str:
        return "conformance_" + self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--conformance-" + self.name

    def value(self, text: str, where: str) -> Any:
        """``text`` parsed, or a usage error naming the option as it was given (``where``)."""
        try:
            return self.parse(text)
        except ValueError as exc:
            raise pytest.UsageError(f"{where}={text!r}: {exc}") from None

    def argument(self) -> dict:
        """The option's argparse keywords: default None, so that an unset option falls to the ini file."""
        if self.parse is None:
            return dict(action="store_true", default=None)
        return dict(action="append" if self.repeatable else "store", default=None, metavar=self.metavar,
                    type=lambda text: self.value(text, self.flag))

    def resolve(self, config: pytest.Config) -> Any:
        """The value by precedence: the command line's, the ini file's, the default."""
        given = config.getoption(self.dest)
        if given is not None:
            return given
        text = config.getini(self.dest)
        where = f"{self.dest} (in {config.inipath or '-o'})"
        if self.parse is None:
            return bool(text) or self.default
        if self.repeatable:
            return [self.value(item, where) for item in text] or self.default
        return self.value(text, where) if text else self.default


OPTIONS = (
    Option("impl", "implementation to judge: a module (its one attribute cross_entropy, softmax or log_softmax) or "
           "module:attribute, imported from the folder pytest was started in; repeatable, once per form (a loss and "
           "a softmax judged in one run); default: the pytest_conformance_impl hook, else torch's own "
           "(cross_entropy, linear_cross_entropy, softmax, log_softmax)", str, metavar="MODULE[:ATTR]",
           repeatable=True, alias="--impl"),
    Option("impl-framework", "the framework the implementation is written in: torch (default), numpy, jax, "
           "keras or mlx (conformance.adapters: torch's keywords, a per-example loss like optax's, Keras' "
           "losses, MLX's cross_entropy; from jax and mlx, a softmax form too: a function named softmax or "
           "log_softmax, or declaring form)",
           _one_of(adapters.FRAMEWORKS), default="torch", metavar="FRAMEWORK", alias="--impl-framework"),
    Option("device", "device to test on (repeatable); default: every available device", _one_of(DEVICES),
           metavar="DEVICE", repeatable=True, alias="--device"),
    Option("dtype", "dtype to test (repeatable): " + ", ".join(DTYPE_NAMES) + "; default: all of them",
           _one_of(DTYPE_NAMES), metavar="DTYPE", repeatable=True, alias="--dtype"),
    Option("xfail", "known, tracked failures: a file of test ids (suffixes), one per line, '# reason' after the id; "
           "they become strict xfails ('~' before the id: not strict, for failures that show on some seeds' data "
           "only); unmatched ids warn", str, metavar="FILE"),
    Option("contract", "standard (default): the error of the standard fused algorithm (a float32 logsumexp minus "
           "the target logit); exact: the shift-invariant bound; parity: half-precision values and gradients no "
           "worse than torch on the same device and dtype", _one_of(CONTRACTS), default=DEFAULT_CONTRACT,
           metavar="CONTRACT"),
    Option("require", "fail instead of reporting a probed gap: " + ", ".join(PROBED_FEATURES) + " (repeatable)",
           _probed_feature, metavar="FEATURE", repeatable=True),
    Option("deep", "the deep run: the boundary sweeps (test_boundaries.py) in every dtype and reduction, not each "
           "boundary once; XOR training in every dtype; the reference's own identities", default=False),
    Option("seed", "offset added to every case's seed, for exact reruns with other data (default 0)", _integer,
           default=0, metavar="SEED"),
    Option("timeout", f"time limit per check (default {DEFAULT_TIMEOUT:g}; 0: none). After 10 timeouts the "
           "remaining checks fail at once", _at_least_zero("seconds"), default=DEFAULT_TIMEOUT, metavar="SECONDS"),
    Option("world-size", "ranks of the vocab-parallel checks' process group (repeatable; default "
           f"{' and '.join(map(str, DEFAULT_WORLD_SIZES))}; under torchrun: the launched world size)", _world_size,
           metavar="RANKS", repeatable=True),
    Option("report", "write every check of the run (and its benchmarks) as JSON, for 'python -m conformance "
           "report'", str, metavar="PATH.json"),
    Option("baseline", "an earlier run's --conformance-report: the verdict lists this run's regressions against it "
           "(the rule of 'python -m conformance report --baseline') and the run exits 1 on any", str,
           metavar="OLD.json"),
    Option("bench", "also run the benchmarks beside torch (they run only with this or --benchmark-only)",
           default=False),
    Option("bench-shape", "benchmark logits shape (repeatable); default on a cpu 256x32000 and 64x128256, "
           "elsewhere 4096x32000 and 1024x128256, plus 8192x128256 on cuda", _shape, metavar="NxC", repeatable=True),
    Option("bench-linear-shape", "linear benchmark shape: tokens x hidden size x vocabulary (repeatable); default "
           "on a cpu 128x64x4096 and 32x64x32768, elsewhere 4096x2048x32000 and 1024x2048x128256. With "
           "--conformance-bench-shape and without this, the linear benchmarks do not run", _linear_shape,
           metavar="NxHxV", repeatable=True),
    Option("bench-rounds", "the fewest paired rounds (torch's and the implementation's, alternating) per benchmark, "
           f"after one untimed warm-up of each (default {DEFAULT_BENCH_ROUNDS})", _rounds,
           default=DEFAULT_BENCH_ROUNDS, metavar="N"),
    Option("bench-precision", "after the fewest rounds, stop once the 95%% interval of the ratio to torch is "
           f"within FRACTION of it (default {DEFAULT_BENCH_PRECISION:g}: +-{DEFAULT_BENCH_PRECISION * 100:g}%%)",
           _at_least_zero("a fraction"), default=DEFAULT_BENCH_PRECISION, metavar="FRACTION"),
    Option("bench-time", "... or once the benchmark's share of SECONDS, the time all the run's benchmarks may spend "
           "in timed rounds, is spent, precise or not: each gets an equal share of what is left when it starts "
           f"(default {DEFAULT_BENCH_TIME:g})", _at_least_zero("seconds"), default=DEFAULT_BENCH_TIME,
           metavar="SECONDS"),
)


def add_options(parser: pytest.Parser) -> None:
    """Every option under its ``--conformance-`` name and its ini key; the short aliases come later
    (``add_aliases``), once the other plugins and the initial conftests have added theirs."""
    group = parser.getgroup("conformance", "cross-entropy conformance kit")
    for option in OPTIONS:
        also = f" (also {option.alias}, where no other plugin or conftest has taken it)" if option.alias else ""
        group.addoption(option.flag, dest=option.dest, help=option.help + also, **option.argument())
        parser.addini(option.dest, help=f"{option.flag} (the command line wins): " + option.help.replace("%%", "%"),
                      type="bool" if option.parse is None else "args" if option.repeatable else "string")


def add_aliases(parser: pytest.Parser) -> None:
    """The short names (``--impl``, ``--device``...) of the options whose alias no plugin or conftest
    has registered: an ML project's conftest often has its own ``--device``, and a second
    registration of a name is an error of argparse."""
    taken = {name for group in parser._groups for argument in group.options for name in argument.names()}
    group = parser.getgroup("conformance")
    for option in OPTIONS:
        if option.alias and option.alias not in taken:
            group.addoption(option.alias, dest=option.dest, help=f"{option.flag}, shorter", **option.argument())


def resolve(config: pytest.Config) -> None:
    """Give every option its value by precedence (``Option.resolve``), once, where every reader finds it."""
    for option in OPTIONS:
        setattr(config.option, option.dest, option.resolve(config))


# The markers the suite's checks carry, each with what it tells the kit.
MARKERS = {
    "feature(name)": "the checks need this feature of the implementation",
    "sweep(name, values, features={})": "a boundary sweep, parametrized by the kit over (value, dtype, reduction): "
                                        "see cases.sweep",
    "input_kind(*kinds)": "the input kinds the check's identity is stated for; an implementation taking another is "
                          "reported unsupported",
    "form(name)": "the form of implementation the check judges (vocabulary.FORMS; default: its module's FORM, else "
                  "logits)",
    "conformance_bench": "a benchmark beside torch; runs only with --benchmark-only or --conformance-bench",
    "deep": "a check of the deep run only (--conformance-deep)",
    "size(elements, parameter)": "how large a run is, where its parameter (a case's name) does not show it: its "
                                 "sized runs go from small to large, and a timeout stops only those at least as "
                                 "large (guards.HangLedger)",
    "design(family)": "the check runs the rows of the family's covering design, parametrized by the kit over (dtype, "
                      "reduction where the family has one, row): see designed.design_params",
    "default_dtypes(*dtypes)": "the dtypes of a check in the default run; every dtype under --conformance-deep or "
                               "--conformance-dtype",
}


def register_markers(config: pytest.Config) -> None:
    """Declare ``MARKERS`` to pytest (``--strict-markers`` accepts them, ``pytest --markers`` lists them)."""
    for signature, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{signature}: {meaning}")


def _available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def devices(config: pytest.Config) -> list[str]:
    """``--conformance-device``, each available here, else every device available here."""
    available = _available_devices()
    chosen = config.getoption("conformance_device") or available
    missing = [d for d in chosen if d not in available]
    if missing:
        raise pytest.UsageError(f"--conformance-device {', '.join(missing)}: not available here (available: "
                                f"{', '.join(available)})")
    return chosen


def world_sizes(config: pytest.Config) -> tuple:
    """The vocab-parallel world sizes: the launcher's under torchrun, else the option's or the default."""
    launched = distributed.launched_world_size()
    if launched is not None:
        return (launched,)
    return tuple(config.getoption("conformance_world_size") or DEFAULT_WORLD_SIZES)


def round_plan(config: pytest.Config, budget: float) -> paired.RoundPlan:
    """When a benchmark stops timing: ``--conformance-bench-rounds`` and ``-precision``, and
    ``budget``, its share of ``--conformance-bench-time``."""
    return paired.RoundPlan(min_pairs=config.getoption("conformance_bench_rounds"),
                            precision=config.getoption("conformance_bench_precision"), budget=budget)


def property_seed(config: pytest.Config):
    """The seed of the property tests' examples: ``--hypothesis-seed`` (hypothesis' own option, which
    its ``derandomize``d profiles would otherwise ignore), else a nonzero ``--conformance-seed``,
    else None (the profile's examples)."""
    chosen = config.getoption("hypothesis_seed", None)
    if chosen is not None:
        return int(chosen) if chosen.lstrip("-").isdigit() else chosen   # as hypothesis reads it
    return config.getoption("conformance_seed") or None


def load_hypothesis_profile(config: pytest.Config) -> None:
    """Load "conformance-ci" unless the user chose a profile: ``--hypothesis-profile`` (hypothesis'
    pytest plugin, option dest ``hypothesis_profile``) or one loaded by their own conftest."""
    if config.getoption("hypothesis_profile", None) is None \
            and hypothesis_settings.get_current_profile_name() == "default":
        hypothesis_settings.load_profile(HYPOTHESIS_CI_PROFILE)
