"""``module:function`` references in a job spec: their shape, and whether this deployment allows
and can find them, checked without importing anything (so without importing TensorFlow).

A reference names a module and an attribute of it (``pipeline.examples.digits:build_model``). A
deployment allows modules by prefix (``FITSTREAM_ALLOWED_MODULES``, default
:data:`DEFAULT_ALLOWED_MODULES`). The bundled examples' earlier name, ``examples``, still names them
(in references and in allowed prefixes alike): see :func:`canonical_module`.

Example:
    >>> module_allowed("pipeline.examples.digits", ("pipeline.examples",)), module_allowed("os", ("pipeline.examples",))
    (True, False)
    >>> canonical_module("examples.digits"), module_allowed("examples.digits", DEFAULT_ALLOWED_MODULES)
    ('pipeline.examples.digits', True)
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import BUNDLED_EXAMPLES, DEFAULT_ALLOWED_MODULES
from pipeline.errors import ConfigurationError
from pipeline.job_errors import JobSpecError, shown

if TYPE_CHECKING:
    from pipeline.job_schema import JobSpec

#: The bundled examples' earlier name, a top-level package that collided with other projects' ``examples``.
EARLIER_EXAMPLES = "examples"
REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def check_reference_shape(value: str, what: str) -> str:
    """Check the shape of a ``module:attribute`` reference (existence is checked by check_importable)."""
    if not REFERENCE.fullmatch(value or ""):
        raise ValueError(f"must look like 'package.module:{what}'; got {shown(value)}")
    return value


def canonical_module(module: str) -> str:
    """``module`` with the bundled examples' earlier name (``examples``) read as ``pipeline.examples``;
    any other module name unchanged. Job specs and FITSTREAM_ALLOWED_MODULES written before the
    examples moved keep working."""
    if module == EARLIER_EXAMPLES or module.startswith(EARLIER_EXAMPLES + "."):
        return BUNDLED_EXAMPLES + module[len(EARLIER_EXAMPLES) :]
    return module


def module_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    module = canonical_module(module)
    prefixes = [canonical_module(prefix) for prefix in allowed]
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def import_reference(ref: str) -> Any:
    """Import ``module:attribute`` and return the attribute. The one place that imports what a job
    spec names (after :func:`check_importable` has checked it against the allowed prefixes).

    Raises:
        ConfigurationError: the module has no such attribute.
    """
    module_name, attribute = ref.split(":", 1)
    module = importlib.import_module(canonical_module(module_name))
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"{module_name!r} has no {attribute!r}") from None


def check_importable(spec: JobSpec, allowed: tuple[str, ...] = DEFAULT_ALLOWED_MODULES) -> None:
    """Check every ``module:function`` against the allowed prefixes and that it exists,
    without importing the module (so without importing TensorFlow).

    Raises:
        JobSpecError: naming each reference that is not allowed or cannot be found.
    """
    refs: list[tuple[str, str]] = [("model", spec.model.fn), ("data", spec.data.fn)]
    refs += [(f"callbacks.{i}.class", c.cls) for i, c in enumerate(spec.callbacks)]
    if spec.lr_schedule is not None and spec.lr_schedule.fn:
        refs.append(("lr_schedule.fn", spec.lr_schedule.fn))
    problems = []
    for where, ref in refs:
        module, attribute = ref.split(":", 1)
        if not module_allowed(module, allowed):
            problems.append(
                f"{where}: module {module!r} is not allowed on this deployment "
                f"(FITSTREAM_ALLOWED_MODULES={','.join(allowed)})"
            )
            continue
        try:
            found = importlib.util.find_spec(canonical_module(module))
        except (ImportError, ValueError):
            found = None
        if found is None or found.origin is None:
            problems.append(f"{where}: cannot import module {module!r}")
            continue
        if found.origin.endswith(".py") and not _defines(Path(found.origin), attribute):
            names = _top_level_names(Path(found.origin))
            close = difflib.get_close_matches(attribute, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}: {module!r} has no {attribute!r}{hint}")
    if problems:
        raise JobSpecError(problems)


def _top_level_names(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names]
    return names


def _defines(path: Path, attribute: str) -> bool:
    return attribute in _top_level_names(path)
