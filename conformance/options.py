"""The kit's command-line options, each parsed and validated by a small ``type=`` function that
raises a clear usage error, and the hypothesis profiles the property tests run under."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings as hypothesis_settings

from . import adapters, distributed, paired
from .cases import dtype_name
from .tolerance import CONTRACTS, DEFAULT_CONTRACT

__all__ = ["DTYPES", "PROBED_FEATURES", "DEFAULT_TIMEOUT", "DEFAULT_WORLD_SIZES", "DEFAULT_BENCH_ROUNDS", "DEFAULT_BENCH_PRECISION",
           "DEFAULT_BENCH_TIME", "HYPOTHESIS_CI_PROFILE", "add_options", "world_sizes", "round_plan", "property_seed",
           "load_hypothesis_profile"]

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# Optional capabilities: a not-supported error from torch reports them as probed gaps.
PROBED_FEATURES = ("double_backward", "forward_ad", "vmap", "differentiable_z_loss", "retain_graph")

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


def _device(value: str) -> str:
    if value not in ("cpu", "cuda", "mps"):
        raise pytest.UsageError(f"--device={value!r}: expected cpu, cuda or mps")
    return value


def _shape(value: str) -> tuple:
    n, sep, c = value.lower().partition("x")
    if not (sep and n.isdigit() and c.isdigit() and int(n) > 0 and int(c) > 0):
        raise pytest.UsageError(f"--conformance-bench-shape={value!r}: expected NxC, e.g. 4096x32000")
    return int(n), int(c)


def _linear_shape(value: str) -> tuple:
    parts = value.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise pytest.UsageError(f"--conformance-bench-linear-shape={value!r}: expected NxHxV, e.g. 4096x2048x32000")
    return tuple(int(p) for p in parts)


def _at_least_zero(option: str, what: str):
    """A ``type=`` for ``option``: a number >= 0 (NaN and words refused), described as ``what``."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0:
            raise pytest.UsageError(f"{option}={value!r}: expected {what} >= 0")
        return number
    return parse


def _rounds(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= paired.MAX_PAIRS:
        raise pytest.UsageError(f"--conformance-bench-rounds={value!r}: expected an integer from 1 to "
                                f"{paired.MAX_PAIRS}")
    return int(value)


def _world_size(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"--conformance-world-size={value!r}: expected a number of ranks >= 1")
    return int(value)


def _probed_feature(value: str) -> str:
    if value not in PROBED_FEATURES:
        raise pytest.UsageError(f"--conformance-require={value!r}: expected one of {', '.join(PROBED_FEATURES)} "
                                "(the capabilities the kit probes; core semantics are always required)")
    return value


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "cross-entropy conformance kit")
    group.addoption("--impl", default=None, metavar="MODULE[:ATTR]",
                    help="implementation to judge: a module (attribute cross_entropy) or module:attribute; "
                         "default: the pytest_conformance_impl hook, else torch.nn.functional.cross_entropy")
    group.addoption("--impl-framework", choices=adapters.FRAMEWORKS, default="torch",
                    help="the framework the implementation is written in: torch (default), numpy or jax "
                         "(conformance.adapters: torch's keywords, or a per-example loss like optax's)")
    group.addoption("--device", action="append", type=_device, default=None, metavar="DEVICE",
                    help="device to test on (repeatable); default: every available device")
    group.addoption("--dtype", action="append", choices=[dtype_name(d) for d in DTYPES], default=None,
                    help="dtype to test (repeatable); default: float64, float32, float16 and bfloat16")
    group.addoption("--conformance-xfail", default=None, metavar="FILE",
                    help="known, tracked failures: a file of test ids (suffixes), one per line, "
                         "'# reason' after the id; they become strict xfails ('~' before the id: not "
                         "strict, for failures that show on some seeds' data only); unmatched ids warn")
    group.addoption("--conformance-contract", choices=CONTRACTS, default=DEFAULT_CONTRACT,
                    help="standard (default): the error of the standard fused algorithm (a float32 logsumexp "
                         "minus the target logit); exact: the shift-invariant bound; parity: half-precision "
                         "values and gradients no worse than torch on the same device and dtype")
    group.addoption("--conformance-require", action="append", type=_probed_feature, default=None,
                    metavar="FEATURE",
                    help="fail instead of reporting a probed gap: " + ", ".join(PROBED_FEATURES) + " (repeatable)")
    group.addoption("--conformance-deep", action="store_true",
                    help="the deep run: the boundary sweeps (test_boundaries.py) in every dtype and reduction, "
                         "not each boundary once; XOR training in every dtype; the reference's own identities")
    group.addoption("--conformance-seed", type=int, default=0, metavar="SEED",
                    help="offset added to every case's seed, for exact reruns with other data (default 0)")
    group.addoption("--conformance-timeout", type=_at_least_zero("--conformance-timeout", "seconds"),
                    default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help=f"time limit per check (default {DEFAULT_TIMEOUT:g}; 0: none). After "
                         "10 timeouts the remaining checks fail at once")
    group.addoption("--conformance-world-size", action="append", type=_world_size, default=None, metavar="RANKS",
                    help="ranks of the vocab-parallel checks' process group (repeatable; default "
                         f"{' and '.join(map(str, DEFAULT_WORLD_SIZES))}; under torchrun: the launched world size)")
    group.addoption("--conformance-report", default=None, metavar="PATH.json",
                    help="write every check of the run (and its benchmarks) as JSON, for "
                         "'python -m conformance report'")
    group.addoption("--conformance-bench", action="store_true",
                    help="also run the benchmarks beside torch (they run only with this or --benchmark-only)")
    group.addoption("--conformance-bench-shape", action="append", type=_shape, default=None, metavar="NxC",
                    help="benchmark logits shape (repeatable); default on a cpu 256x32000 and 64x128256, "
                         "elsewhere 4096x32000 and 1024x128256, plus 8192x128256 on cuda")
    group.addoption("--conformance-bench-linear-shape", action="append", type=_linear_shape, default=None,
                    metavar="NxHxV",
                    help="linear benchmark shape: tokens x hidden size x vocabulary (repeatable); default on a cpu "
                         "128x64x4096 and 32x64x32768, elsewhere 4096x2048x32000 and 1024x2048x128256. With "
                         "--conformance-bench-shape and without this, the linear benchmarks do not run")
    group.addoption("--conformance-bench-rounds", type=_rounds, default=DEFAULT_BENCH_ROUNDS, metavar="N",
                    help="the fewest paired rounds (torch's and the implementation's, alternating) per benchmark, "
                         f"after one untimed warm-up of each (default {DEFAULT_BENCH_ROUNDS})")
    group.addoption("--conformance-bench-precision", type=_at_least_zero("--conformance-bench-precision", "a fraction"),
                    default=DEFAULT_BENCH_PRECISION, metavar="FRACTION",
                    help="after the fewest rounds, stop once the 95%% interval of the ratio to torch is within "
                         f"FRACTION of it (default {DEFAULT_BENCH_PRECISION:g}: +-{DEFAULT_BENCH_PRECISION * 100:g}%%)")
    group.addoption("--conformance-bench-time", type=_at_least_zero("--conformance-bench-time", "seconds"),
                    default=DEFAULT_BENCH_TIME, metavar="SECONDS",
                    help="... or once the benchmark's share of SECONDS, the time all the run's benchmarks may "
                         "spend in timed rounds, is spent, precise or not: each gets an equal share of what is "
                         f"left when it starts (default {DEFAULT_BENCH_TIME:g})")


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
