"""Job specs: what a user queues, validated before anything is queued (no TensorFlow here).

A job is a YAML or JSON file::

    name: digits-mlp
    model: examples.digits:build_model            # or {fn: "module:function", kwargs: {...}}
    data: {fn: examples.digits:load_data, kwargs: {validation_fraction: 0.2}}
    fit: {epochs: 30, batch_size: 32}
    early_stopping: {monitor: val_loss, patience: 3}   # restore_best_weights defaults to true
    checkpoint: {monitor: val_loss}                    # save_best_only defaults to true
    reduce_lr: {monitor: val_loss, factor: 0.5, patience: 2}
    tags: {team: vision}

Example:
    >>> spec = load_spec_text("name: x\\nmodel: examples.digits:build_model\\ndata: examples.digits:load_data\\n")
    >>> spec.early_stopping.monitor, spec.early_stopping.restore_best_weights, spec.queue
    ('val_loss', True, 'gpu')
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigurationError
from pipeline.events import unstorable_text
from pipeline.monitor import MAXIMISED_METRICS, infer_mode

DEFAULT_ALLOWED_MODULES = ("examples",)
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


#: A spec is a page of settings. YAML aliases nested in one another can make a few lines stand for
#: billions of values (which queueing the job would then write out), and deep nesting exhausts the
#: parser: both are refused, with these limits, before anything else reads the spec.
MAX_SPEC_VALUES = 100_000
MAX_SPEC_DEPTH = 32  # the run_queued event carries the spec one level down (events.MAX_NESTING)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` as an error quotes it: at most ``limit`` characters (a value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


class JobSpecError(ConfigurationError):
    """A job spec is invalid. Not retryable: the message lists every problem and how to fix it."""

    def __init__(self, problems: list[str], source: str = "job spec") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _reference(value: str, what: str) -> str:
    """Check the shape of a ``module:attribute`` reference (existence is checked by check_importable)."""
    if not REFERENCE.fullmatch(value or ""):
        raise ValueError(f"must look like 'package.module:{what}'; got {_shown(value)}")
    return value


class CallableRef(_Strict):
    """``module:function`` plus keyword arguments."""

    fn: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("fn")
    @classmethod
    def _shape(cls, value: str) -> str:
        return _reference(value, "function")

    @property
    def module(self) -> str:
        return self.fn.split(":", 1)[0]

    @property
    def attribute(self) -> str:
        return self.fn.split(":", 1)[1]


def _callable_ref(value: Any) -> Any:
    return {"fn": value} if isinstance(value, str) else value


class FitSettings(_Strict):
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int | None = Field(default=32, ge=1)
    validation_split: float | None = Field(default=None, gt=0, lt=1)
    shuffle: bool = True
    steps_per_epoch: int | None = Field(default=None, ge=1)
    verbose: Literal[0, 1, 2] = 2


class _Monitored(_Strict):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"

    @model_validator(mode="after")
    def _mode_agrees(self) -> _Monitored:
        base = self.monitor.removeprefix("val_")
        try:
            natural = infer_mode(self.monitor)
        except ConfigurationError:
            if self.mode == "auto" and base not in MAXIMISED_METRICS:
                raise ValueError(
                    f"cannot tell whether {_shown(self.monitor)} should be minimised or maximised; "
                    "set mode: min or mode: max"
                ) from None
            return self
        if self.mode != "auto" and self.mode != natural:
            raise ValueError(
                f"monitor {_shown(self.monitor)} is a metric to {'maximise' if natural == 'max' else 'minimise'}, "
                f"but mode is {self.mode!r}; use mode: {natural} (or auto)"
            )
        return self


class EarlyStoppingSettings(_Monitored):
    """``keras.callbacks.EarlyStopping``'s keyword arguments (passed through by name)."""

    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0)
    baseline: float | None = None
    start_from_epoch: int = Field(default=0, ge=0)
    restore_best_weights: bool = True


class CheckpointSettings(_Monitored):
    """``keras.callbacks.ModelCheckpoint``'s keyword arguments, and the file name inside the run's folder."""

    save_best_only: bool = True
    save_weights_only: bool = False
    save_freq: Any = "epoch"  # or every N batches
    initial_value_threshold: float | None = None
    filename: str = "best.keras"  # may hold Keras' placeholders, e.g. "ckpt-{epoch:02d}.keras"

    @field_validator("save_freq")
    @classmethod
    def _save_freq(cls, value: Any) -> Any:
        if value == "epoch" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be 'epoch' or a number of batches (1 or more); got {_shown(value)}")

    @field_validator("filename")
    @classmethod
    def _inside_run_dir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or not value.strip():
            raise ValueError(f"must be a relative path inside the run's directory; got {_shown(value)}")
        if not (value.endswith(".keras") or value.endswith(".weights.h5") or value.endswith(".h5")):
            raise ValueError(
                f"must end in .keras (or .weights.h5 with save_weights_only); got {_shown(value)}"
            )
        return value


class ReduceLRSettings(_Monitored):
    """``keras.callbacks.ReduceLROnPlateau``'s keyword arguments (passed through by name)."""

    factor: float = Field(default=0.1, gt=0, lt=1)
    patience: int = Field(default=10, ge=0)
    min_delta: float = Field(default=1e-4, ge=0)
    cooldown: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class LRSchedule(_Strict):
    kind: Literal["step", "exponential", "cosine", "function"]
    fn: str | None = None  # for kind: function — "module:function(epoch, lr)"
    every: int | None = Field(default=None, ge=1)  # step
    factor: float | None = Field(default=None, gt=0)  # step / exponential
    total_epochs: int | None = Field(default=None, ge=1)  # cosine
    min_lr: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> LRSchedule:
        needs = {"step": ("every", "factor"), "exponential": ("factor",), "cosine": (), "function": ("fn",)}[
            self.kind
        ]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"lr_schedule kind {self.kind!r} needs {', '.join(missing)}")
        return self


class TensorBoardSettings(_Strict):
    """``keras.callbacks.TensorBoard``'s keyword arguments (passed through by name); the logs go to
    the run's ``tensorboard/`` folder. ``tensorboard: true`` means these defaults."""

    histogram_freq: int = Field(default=0, ge=0)
    write_graph: bool = True
    write_images: bool = False
    write_steps_per_second: bool = False
    update_freq: Literal["epoch", "batch"] | int = "epoch"
    profile_batch: int | list[int] = 0
    embeddings_freq: int = Field(default=0, ge=0)

    @field_validator("update_freq")
    @classmethod
    def _update_freq(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"must be 'epoch', 'batch' or a number of batches (1 or more); got {value!r}")
        return value

    @field_validator("profile_batch")
    @classmethod
    def _profile_batch(cls, value: Any) -> Any:
        if isinstance(value, list) and (len(value) != 2 or value[0] < 1 or value[1] < value[0]):
            raise ValueError(f"must be 0 (off), a batch number, or [first, last] batches; got {value!r}")
        return value


class ExtraCallback(_Strict):
    cls: str = Field(alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cls")
    @classmethod
    def _shape(cls, value: str) -> str:
        return _reference(value, "ClassName")


class PromoteSettings(_Strict):
    """When and how a run's best checkpoint goes to the model store."""

    on_early_stop: bool = True
    on_complete: bool = False
    force: bool = False  # move `champion` even if not better
    name: str | None = None  # model name; default: the job's name
    #: Save the model EarlyStopping restored to its best weights at the end of training (promoted
    #: when no ModelCheckpoint file can be).
    save_restored_model: bool = True


class JobSpec(_Strict):
    """A training job. See the module docstring for the file format."""

    name: str = Field(min_length=1, max_length=200)
    model: CallableRef
    data: CallableRef
    fit: FitSettings = Field(default_factory=FitSettings)
    early_stopping: EarlyStoppingSettings | None = Field(default_factory=EarlyStoppingSettings)
    checkpoint: CheckpointSettings | None = Field(default_factory=CheckpointSettings)
    reduce_lr: ReduceLRSettings | None = None
    lr_schedule: LRSchedule | None = None
    terminate_on_nan: bool = True
    csv_log: bool = True
    tensorboard: TensorBoardSettings | None = None
    callbacks: list[ExtraCallback] = Field(default_factory=list)
    batch_events_every: int | None = Field(default=None, ge=1)
    queue: str = "gpu"
    tags: dict[str, str] = Field(default_factory=dict)
    #: Alert rules for this job only, in the rules-file format; channels come from
    #: FITSTREAM_ALERT_RULES. Checked by `fitstream submit` (see workers/submit.py).
    alerts: list[dict[str, Any]] = Field(default_factory=list)
    promote: PromoteSettings = Field(default_factory=PromoteSettings)
    #: Seeds Python, NumPy and the backend and turns on TensorFlow's op determinism: the same job
    #: trains the same, also when it is resumed after its training process was killed.
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("model", "data", mode="before")
    @classmethod
    def _callable(cls, value: Any) -> Any:
        return _callable_ref(value)

    @field_validator("alerts", mode="before")
    @classmethod
    def _yaml_on_keys(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key (lifecycle rules) as the boolean true.
        if isinstance(value, list):
            return [
                {("on" if k is True else k): v for k, v in r.items()} if isinstance(r, dict) else r
                for r in value
            ]
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.:-]+( [\w.:-]+)*", value):
            raise ValueError(
                f"use letters, digits, '_', '-', '.', ':' and single spaces; got {_shown(value)}"
            )
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if not QUEUE_NAME.match(value):
            raise ValueError(f"not a valid queue name: {_shown(value)}")
        return value

    @field_validator("early_stopping", "checkpoint", "reduce_lr", "tensorboard", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # `early_stopping: true` means the defaults; `false` turns it off.
        if value is True:
            return {}
        if value is False:
            return None
        return value

    def monitored(self) -> list[tuple[str, str]]:
        """(section, metric) for each monitoring callback, to check against the model's logs."""
        return [
            (section, getattr(self, section).monitor)
            for section in ("early_stopping", "checkpoint", "reduce_lr")
            if getattr(self, section) is not None
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


# -- what a deployment allows ------------------------------------------------------------------
def module_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


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
            found = importlib.util.find_spec(module)
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


def spec_to_json(spec: JobSpec) -> str:
    return json.dumps(spec.model_dump(mode="json", by_alias=True))
