"""Job specs: what a user queues, validated before anything is queued (no TensorFlow here).

A job is a YAML or JSON file::

    name: digits-mlp
    model: pipeline.examples.digits:build_model            # or {fn: "module:function", kwargs: {...}}
    data: {fn: pipeline.examples.digits:load_data, kwargs: {validation_fraction: 0.2}}
    fit: {epochs: 30, batch_size: 32}
    early_stopping: {monitor: val_loss, patience: 3}   # restore_best_weights defaults to true
    checkpoint: {monitor: val_loss}                    # save_best_only defaults to true
    reduce_lr: {monitor: val_loss, factor: 0.5, patience: 2}
    tags: {team: vision}

The models of each section are in :mod:`pipeline.job_schema`, the checks of ``module:function``
references in :mod:`pipeline.job_references`, the reading of YAML/JSON text within limits in
:mod:`pipeline.config_text`; this module reads and validates a spec with errors a user can act on,
and exports all of it.

Example:
    >>> spec = load_spec_text("name: x\\nmodel: pipeline.examples.digits:build_model\\ndata: pipeline.examples.digits:load_data\\n")
    >>> spec.early_stopping.monitor, spec.early_stopping.restore_best_weights, spec.queue
    ('val_loss', True, 'gpu')
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

# Names other modules import from here: the spec's parts live in the modules named above.
from pipeline.config_text import (
    MAX_SPEC_DEPTH,
    MAX_SPEC_VALUES,
    config_problem,
    parse_config_text,
    yaml_problem,
)
from pipeline.job_errors import JobSpecError
from pipeline.job_errors import shown as _shown
from pipeline.job_references import (
    DEFAULT_ALLOWED_MODULES,
    REFERENCE,
    check_importable,
    module_allowed,
)
from pipeline.job_schema import (
    QUEUE_NAME,
    CallableRef,
    CheckpointSettings,
    EarlyStoppingSettings,
    ExtraCallback,
    FitSettings,
    JobSpec,
    LRSchedule,
    PromoteSettings,
    ReduceLRSettings,
    TensorBoardSettings,
)

__all__ = [
    "JobSpecError",
    "QUEUE_NAME",
    "CallableRef",
    "CheckpointSettings",
    "EarlyStoppingSettings",
    "ExtraCallback",
    "FitSettings",
    "JobSpec",
    "LRSchedule",
    "PromoteSettings",
    "ReduceLRSettings",
    "TensorBoardSettings",
    "DEFAULT_ALLOWED_MODULES",
    "REFERENCE",
    "check_importable",
    "module_allowed",
    "MAX_SPEC_DEPTH",
    "MAX_SPEC_VALUES",
    "config_problem",
    "parse_config_text",
    "yaml_problem",
    "load_spec",
    "load_spec_text",
    "parse_spec",
    "spec_to_json",
]


# -- parsing with errors a user can act on ----------------------------------------------
def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "fit": FitSettings,
    "early_stopping": EarlyStoppingSettings,
    "checkpoint": CheckpointSettings,
    "reduce_lr": ReduceLRSettings,
    "lr_schedule": LRSchedule,
    "model": CallableRef,
    "data": CallableRef,
    "promote": PromoteSettings,
    "tensorboard": TensorBoardSettings,
}


def _key(part: str) -> str:
    """A key as an error names it: as written, or quoted when it is empty, holds a dot (the
    separator of a key path), something unprintable or blanks at an end, or is long."""
    plain = part and part.isprintable() and "." not in part and part.strip() == part and len(part) <= 80
    return part if plain else _shown(part)


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    where = ".".join(_key(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = _SECTION_MODELS.get(loc[0], JobSpec) if len(loc) > 1 else JobSpec
        if len(loc) > 2 and loc[0] == "callbacks":
            parent = ExtraCallback
        names = _field_names(parent)
        close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
        if not close and len(loc) == 1:  # a section's key written at the top level
            close = [
                f"{section}.{loc[0]}" for section, m in _SECTION_MODELS.items() if loc[0] in _field_names(m)
            ][:1]
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
        return f"{where}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{where}: required"
    received = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(received, (dict, list)) or "got " in message else f" (got {_shown(received)})"
    return f"{where}: {message}{shown}"


def parse_spec(data: Any, *, source: str = "job spec") -> JobSpec:
    """Validate a parsed spec (a mapping). Raises :class:`JobSpecError` listing every problem."""
    if not isinstance(data, dict):
        raise JobSpecError([f"must be a mapping of keys to values, got {type(data).__name__}"], source)
    problem = config_problem(data)
    if problem is not None:
        raise JobSpecError([problem], source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError([_describe(e) for e in exc.errors()], source) from None


def load_spec_text(text: str, *, source: str = "job spec") -> JobSpec:
    try:
        data = parse_config_text(text)
    except yaml.YAMLError as exc:
        raise JobSpecError([f"not valid YAML/JSON: {yaml_problem(exc)}"], source) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise JobSpecError([f"nested more than {MAX_SPEC_DEPTH} levels deep"], source) from None
    return parse_spec(data, source=source)


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a YAML or JSON job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobSpecError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError as exc:
        problem = f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise JobSpecError([problem], str(path)) from None
    except ValueError as exc:  # a NUL in the path: no file can have that name
        raise JobSpecError([f"cannot read {_shown(str(path))}: {exc}"], _shown(str(path))) from None
    return load_spec_text(text, source=str(path))


def spec_to_json(spec: JobSpec) -> str:
    return json.dumps(spec.model_dump(mode="json", by_alias=True))
