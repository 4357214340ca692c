"""How the self-tests run the conformance suite on a fixture (the ``suite`` fixture in conftest.py)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("-p", "no:cacheprovider", "-q", "--ignore-glob=*test_benchmark.py")
SUITE = ("--pyargs", "conformance.suite", *OPTIONS)


def suite_of(*checks: str) -> tuple:
    """The arguments of a run that collects only the suite modules defining ``checks``: a run
    that collects the whole suite to deselect all but one check spends most of its time
    collecting."""
    modules = sorted({f"conformance.suite.{path.stem}" for path in (ROOT / "conformance" / "suite").glob("test_*.py")
                      if any(re.search(rf"^def {check}\(", path.read_text(), re.M) for check in checks)})
    assert modules, f"no suite module defines {checks}"
    return ("--pyargs", *modules, *OPTIONS)
