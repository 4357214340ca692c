"""The README's first-run page shows what the kit does: a family of checks it leaves out, or a
failure quoted as the kit no longer prints it, would mislead a new user on their first run."""
import re

import pytest

import fixtures
from suite_run import ROOT


def _first_run_page() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Your first run\n")
    return readme[start:readme.index("\n## ", start + 1)]


def _code_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"^```\n(.*?)^```$", text, re.S | re.M)]


def test_first_run_page_explains_every_family():
    """Each suite module is a family, a row of the verdict's matrix: the page's table has a row for each."""
    families = {path.stem.removeprefix("test_") for path in (ROOT / "conformance" / "suite").glob("test_*.py")}
    explained = set(re.findall(r"^\| `(\w+)` \|", _first_run_page(), re.M))
    assert families == explained


def test_first_run_page_quotes_a_failure_as_the_kit_prints_it(suite):
    """The annotated failure and its copyable snippet are the very lines of the run the page names."""
    page = _first_run_page()
    command = re.search(r'`pytest (--conformance-impl=\S+) -k "([^"]+)"`', page.replace("\n", " "))
    result = suite(command.group(1), "-k", command.group(2))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    printed = [line.rstrip() for line in result.stdout.lines]
    failure, copyable = _code_blocks(page)[:2]
    quoted = [line for line in failure if not line.endswith("...")]
    assert len(quoted) >= 5 and all(line in printed for line in quoted), \
        [line for line in quoted if line not in printed]
    start = printed.index(next(line for line in printed if "reproduce (copy and run as is)" in line)) + 1
    assert copyable[1:] == printed[start:start + len(copyable) - 1]


def test_the_fixture_corpus_is_counted_as_it_is():
    """The proof section's counts are the corpus' own: a fixture added or removed updates them."""
    section = (ROOT / "README.md").read_text().split("\n## Proof: the fixture corpus\n")[1].split("\n## ")[0]
    counts = re.search(r"\*\*(\d+) correct\*\*, \*\*(\d+) with one planted bug each\*\*, (\d+) hostile programs "
                       r"and (\d+) written in other\s+frameworks", section)
    assert counts, section[:400]
    assert tuple(map(int, counts.groups())) == tuple(map(len, (fixtures.CORRECT, fixtures.BROKEN, fixtures.HOSTILE,
                                                                 fixtures.FRAMEWORKS)))
