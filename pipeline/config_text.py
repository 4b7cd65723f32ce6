"""Reading settings files (job specs, alert rules files): JSON or YAML text, refused with a reason
when it stands for too many values, nests too deeply, contains itself or holds text SQL cannot store.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from pipeline.events import unstorable_text

#: A spec is a page of settings. YAML aliases nested in one another can make a few lines stand for
#: billions of values (which queueing the job would then write out), and deep nesting exhausts the
#: parser: both are refused, with these limits, before anything else reads the spec.
MAX_SPEC_VALUES = 100_000
MAX_SPEC_DEPTH = 32  # the run_queued event carries the spec one level down (events.MAX_NESTING)


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line, with where it is (its own message spans lines and quotes the text).

    Example:
        >>> try:
        ...     yaml.safe_load("name: [1, 2")
        ... except yaml.YAMLError as exc:
        ...     print(yaml_problem(exc))
        while parsing a flow sequence: expected ',' or ']', but got '<stream end>' (line 1, column 12)
    """
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return (
        " ".join(f"{context}: {problem}{where}".split()) if context else " ".join(f"{problem}{where}".split())
    )


def parse_config_text(text: str) -> Any:
    """A JSON object as JSON, anything else as YAML (job specs, alert rules files). PyYAML reads the
    escapes of a character beyond U+FFFF — "\\ud83d\\ude80", as json.dumps writes it — as two
    unpaired surrogates.

    Raises:
        yaml.YAMLError: not YAML (nor JSON).
        RecursionError: nested too deeply for the parser.
    """
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # YAML's flow style: {name: x, …}
    return yaml.safe_load(text)


def config_problem(
    data: Any, *, max_values: int = MAX_SPEC_VALUES, max_depth: int = MAX_SPEC_DEPTH
) -> str | None:
    """What makes parsed YAML or JSON ``data`` unfit to read as settings, or None: more than
    ``max_values`` values or deeper than ``max_depth`` — counting each YAML alias as what it
    expands to, without expanding anything (a shared collection is measured once) — a collection
    that contains itself, or text no SQL database stores (see :func:`pipeline.events.unstorable_text`).
    Alert rules files are read with it too.

    Example:
        >>> config_problem({"name": "x", "tags": {"a": "b"}}) is None
        True
    """
    measured: dict[int, tuple[int, int]] = {}  # id → (values, depth)
    open_ids: set[int] = set()  # collections being measured: the path from the top to here
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        children = [
            c for c in (node.values() if isinstance(node, dict) else node) if isinstance(c, (dict, list))
        ]
        if finished:
            open_ids.discard(id(node))
            values = len(node) + sum(measured[id(c)][0] for c in children)
            depth = 1 + max((measured[id(c)][1] for c in children), default=0)
            measured[id(node)] = (values, depth)
            if values > max_values:
                return (
                    f"stands for more than {max_values:,} values (YAML aliases repeated inside one another?)"
                )
            if depth > max_depth:
                return f"nested more than {max_depth} levels deep"
            continue
        if id(node) in measured:
            continue
        open_ids.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_ids:
                return "contains itself (a YAML alias inside its own anchor)"
            if id(child) not in measured:
                stack.append((child, False))
    return unstorable_text(data)  # bounded now: at most max_values values to look at
