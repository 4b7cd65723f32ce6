"""The examples in public docstrings run, and say what they print (``doctest``)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO


def _runs_an_example(text: str) -> bool:
    """A module counts only if one of its examples really runs (not every one marked +SKIP)."""
    return any(">>>" in line and "+SKIP" not in line for line in text.splitlines())


MODULES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for package in ("pipeline", "workers", "alerts")
    for path in (REPO / package).rglob("*.py")
    if _runs_an_example(path.read_text())
)


def test_the_examples_are_found():
    assert {"pipeline.store.copying", "pipeline.fingerprint", "pipeline.store.fs", "pipeline.monitor"} <= set(
        MODULES
    )


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    checked = [
        example
        for test in doctest.DocTestFinder().find(module)
        for example in test.examples
        if example.want.strip() and not example.options.get(doctest.SKIP)
    ]
    assert checked, f"{module_name}: no example runs and says what it prints (an import alone checks nothing)"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {Path(module.__file__).name} failed (run python -m doctest -v on it)"
    )
