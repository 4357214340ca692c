"""How the self-tests run the conformance suite on a fixture (the ``suite`` fixture in conftest.py)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ("--pyargs", "conformance.suite", "-p", "no:cacheprovider", "-q", "--ignore-glob=*test_benchmark.py")
