"""The README's Layout section is the tree: every module of `pipeline/`, `workers/` and `alerts/`
is listed there, at its place, and nothing listed is missing from the tree."""

from __future__ import annotations

import re

from tests.conftest import REPO

DESCRIBED_IN_FULL = ("pipeline", "workers", "alerts")
NAMED_ONLY = ("migrations", "examples", "benchmarks", "tests", "scripts", "docs")


def _layout_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```text\n(.*?)\n```", section, flags=re.S)
    return block.splitlines()


def _listed_paths() -> set[str]:
    """Paths from the indented tree: two spaces per level, a name first, then what it is."""
    paths: set[str] = set()
    parents: list[str] = []
    for line in _layout_block():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        parents = parents[:depth]
        path = "/".join([*parents, name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
    return paths


def _tree_modules() -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for top in DESCRIBED_IN_FULL
        for path in (REPO / top).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }


def test_every_module_is_listed_at_its_place_and_every_listed_module_exists():
    listed = _listed_paths()
    listed_modules = {p for p in listed if p.endswith(".py")}
    tree = _tree_modules()
    assert tree - listed_modules == set(), "modules missing from the README's Layout"
    assert listed_modules - tree == set(), "the README's Layout lists modules that do not exist"
    assert set(NAMED_ONLY) <= listed, "top-level folders missing from the README's Layout"


def test_every_listed_line_says_what_the_thing_is():
    bare = [line for line in _layout_block() if line.strip() and len(line.split(maxsplit=1)) < 2]
    assert bare == []
