"""How the self-tests run the conformance suite on a fixture (the ``suite`` fixture in conftest.py)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE_DIR = ROOT / "conformance" / "suite"
OPTIONS = ("-p", "no:cacheprovider", "-q", "--ignore-glob=*test_benchmark.py")
SUITE = ("--pyargs", "conformance.suite", *OPTIONS)


def suite_of(*checks: str) -> tuple:
    """The arguments of a run that collects only the suite modules holding ``checks``: a run that
    collects the whole suite to deselect all but one check spends most of its time collecting."""
    modules = sorted(f"conformance.suite.{path.stem}" for path in SUITE_DIR.glob("test_*.py")
                     if any(_holds(path.stem, check) for check in checks))
    assert modules, f"no suite module holds {checks}"
    return ("--pyargs", *modules, *OPTIONS)


def _holds(module: str, check: str) -> bool:
    """Whether the suite module defines ``check`` or takes it from another (test_log_softmax takes
    test_softmax's checks by ``import *``)."""
    source = (SUITE_DIR / f"{module}.py").read_text()
    return bool(re.search(rf"^def {check}\(", source, re.M)) or any(
        _holds(other, check) for other in re.findall(r"^from conformance\.suite\.(test_\w+) import \*", source, re.M))
