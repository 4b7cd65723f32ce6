"""Sweeps: one job file, many trials — a grid and/or random draws over dotted spec paths (no TensorFlow).

A job file with a ``sweep:`` section is a sweep::

    name: digits-mlp
    model: {fn: pipeline.examples.digits:build_model, kwargs: {hidden: 32}}
    data: pipeline.examples.digits:load_data
    sweep:
      grid:                                   # every combination, in the order written
        model.kwargs.hidden: [32, 64]
        fit.batch_size: [32, 64]
      random:                                 # `trials` draws for each grid point
        trials: 3
        seed: 7
        model.kwargs.learning_rate: {loguniform: [0.0001, 0.01]}
        model.kwargs.dropout: {uniform: [0.0, 0.5]}
        model.kwargs.layers: {int: [1, 3]}    # both ends included
        fit.shuffle: {choice: [true, false]}
      max_parallel: 2                         # trials queued at once; the rest wait their turn
      prune: {kind: median, warmup_epochs: 2} # stop trials that fall behind (pipeline.pruning)

Every trial is an ordinary job spec, validated before anything is queued; a bad value names its
trial and its key.

Example:
    >>> sweep = parse_sweep_text('''
    ... name: s
    ... model: pipeline.examples.digits:build_model
    ... data: pipeline.examples.digits:load_data
    ... sweep: {grid: {fit.batch_size: [16, 32]}, max_parallel: 1}
    ... ''')
    >>> [t.assignment for t in sweep.trials], sweep.settings.max_parallel
    ([{'fit.batch_size': 16}, {'fit.batch_size': 32}], 1)
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.jobs import (
    MAX_SPEC_DEPTH,
    JobSpec,
    JobSpecError,
    config_problem,
    load_spec_text,
    parse_config_text,
    parse_spec,
    yaml_problem,
)

#: At most this many trials in one sweep (each is a queued job and a row in every table).
MAX_TRIALS = 1_000
#: ``runs.status_reason`` of a trial that ``fitstream cancel SWEEP`` cancelled.
SWEEP_CANCELLED_REASON = "sweep cancelled (fitstream cancel)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Strict):
    """One random parameter: exactly one of uniform / loguniform / int (``[low, high]``) or choice."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(default=None, alias="int")
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "int_", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of uniform: [low, high], loguniform: [low, high], int: [low, high], choice: [...]"
            )
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds is not None and not all(math.isfinite(b) for b in bounds):
                raise ValueError(f"{name}: both ends must be finite numbers; got {list(bounds)}")
        for name in ("uniform", "loguniform", "int_"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] <= bounds[1]:
                raise ValueError(f"{name.rstrip('_')}: low must not be above high; got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: both ends must be above 0; got {list(self.loguniform)}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: needs at least one value")
        return self

    def draw(self, rng: random.Random) -> Any:
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.loguniform is not None:
            low, high = self.loguniform
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        if self.int_ is not None:
            return rng.randint(*self.int_)
        assert self.choice is not None
        return rng.choice(self.choice)


class PruneSettings(_Strict):
    """Median pruning: at each epoch from ``warmup_epochs`` on, a trial whose monitored value is worse
    than the median of the sweep's finished trials at the same epoch (at least ``min_trials`` of them)
    is stopped as ``pruned`` — the rule of Optuna's ``MedianPruner``."""

    kind: Literal["median"] = "median"
    warmup_epochs: int = Field(default=0, ge=0)
    min_trials: int = Field(default=1, ge=1)
    #: The metric compared; default: the trial's own monitored metric (its EarlyStopping's), else val_loss.
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None


class SweepSettings(_Strict):
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    random: dict[str, Any] = Field(default_factory=dict)
    max_parallel: int | None = Field(default=None, ge=1)
    prune: PruneSettings | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            _check_path(key)
            if not values:
                raise ValueError(f"{key}: needs at least one value")
            odd = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
            if odd:
                raise ValueError(f"{key}: {odd[0]!r} is not a finite number (a job spec cannot carry it)")
        return value

    @model_validator(mode="after")
    def _something(self) -> SweepSettings:
        if not self.grid and not self.random_params():
            raise ValueError("a sweep needs grid: and/or random: parameters")
        overlap = sorted(set(self.grid) & set(self.random_params()))
        if overlap:
            raise ValueError(f"{', '.join(overlap)}: in both grid and random; give each key one place")
        return self

    @field_validator("random")
    @classmethod
    def _random(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        trials = value.get("trials")
        if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
            raise ValueError(f"random: trials must be a whole number, 1 or more; got {trials!r}")
        seed = value.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"random: seed must be a whole number; got {seed!r}")
        parsed: dict[str, Any] = {"trials": trials, "seed": seed}
        for key, raw in value.items():
            if key in ("trials", "seed"):
                continue
            _check_path(key)
            if not isinstance(raw, dict):
                raise ValueError(f"{key}: give a distribution, e.g. {{uniform: [0.0, 0.5]}}; got {raw!r}")
            try:
                parsed[key] = Distribution.model_validate(raw)
            except ValidationError as exc:
                problem = exc.errors()[0]
                if problem["type"] == "extra_forbidden":
                    raise ValueError(
                        f"{key}: unknown distribution {problem['loc'][-1]!r}; give exactly one of "
                        "uniform: [low, high], loguniform: [low, high], int: [low, high], choice: [...]"
                    ) from None
                raise ValueError(f"{key}: {problem['msg'].removeprefix('Value error, ')}") from None
        if len(parsed) == 2:
            raise ValueError("random: names no parameter to draw (keys besides trials and seed)")
        return parsed

    def random_params(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.random.items() if k not in ("trials", "seed")}

    def as_json(self) -> dict[str, Any]:
        """The section as written (distributions as mappings), for events and the ``sweeps`` table."""
        out: dict[str, Any] = {"grid": self.grid}
        if self.random:
            out["random"] = {
                k: (v.model_dump(by_alias=True, exclude_none=True) if isinstance(v, Distribution) else v)
                for k, v in self.random.items()
            }
        out["max_parallel"] = self.max_parallel
        out["prune"] = self.prune.model_dump() if self.prune else None
        return out


def _check_path(key: str) -> None:
    parts = key.split(".")
    if not key or any(not p for p in parts) or parts[0] == "sweep":
        raise ValueError(
            f"{key!r} is not a spec path; use dotted keys such as model.kwargs.hidden or fit.batch_size"
        )
    if parts[0] in ("name", "queue"):  # one sweep, one name (its trials are compared by it), one queue
        raise ValueError(f"{key!r} cannot vary within a sweep: its trials share the job's name and queue")


@dataclass(frozen=True)
class Trial:
    index: int
    assignment: dict[str, Any]
    spec: JobSpec


@dataclass(frozen=True)
class Sweep:
    name: str
    settings: SweepSettings
    trials: tuple[Trial, ...]


def assignments(settings: SweepSettings) -> list[dict[str, Any]]:
    """Every trial's values: the grid's combinations (first key slowest), each with ``trials`` random
    draws when ``random:`` is given (the same seed gives the same draws)."""
    grid_keys = list(settings.grid)
    points = [
        dict(zip(grid_keys, values)) for values in itertools.product(*(settings.grid[k] for k in grid_keys))
    ]
    draws = settings.random_params()
    if not draws:
        return points
    rng = random.Random(settings.random.get("seed"))
    return [
        {**point, **{k: d.draw(rng) for k, d in draws.items()}}
        for point in points
        for _ in range(settings.random["trials"])
    ]


def apply(spec_data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the raw spec mapping with the dotted ``key`` set to ``value``.

    A ``module:function`` shorthand becomes ``{fn: …}`` and a section written ``true`` becomes its
    defaults, so that ``model.kwargs.hidden`` and ``early_stopping.patience`` can always be set.
    """
    data = copy.deepcopy(spec_data)
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and depth == 0 and part in ("model", "data"):
            child = node[part] = {"fn": child}
        elif child is None and part not in node or child is True:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ValueError(f"cannot set {key}: {where} is {child!r} in the job file, not a section")
        node = child
    node[parts[-1]] = value
    return data


def parse_sweep(
    data: dict[str, Any], *, source: str = "job spec", allowed: tuple[str, ...] | None = None
) -> Sweep:
    """Validate a job mapping with a ``sweep:`` section and every trial it makes.

    Raises:
        JobSpecError: the sweep section is invalid, it makes more than :data:`MAX_TRIALS`
            trials, or some trial is not a valid job (each problem names its trial and key).
    """
    if not isinstance(data, dict) or "sweep" not in data:
        raise JobSpecError(["sweep: this job file has no sweep section"], source)
    base = {k: v for k, v in data.items() if k != "sweep"}
    try:
        settings = SweepSettings.model_validate(data["sweep"])
    except ValidationError as exc:
        problems = [
            f"sweep.{'.'.join(str(p) for p in e['loc'][:1])}: {e['msg'].removeprefix('Value error, ')}"
            if e["loc"]
            else f"sweep: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise JobSpecError(problems, source) from None
    count = math.prod(len(v) for v in settings.grid.values()) * (
        settings.random["trials"] if settings.random else 1
    )
    if count > MAX_TRIALS:  # counted before any trial is made: a few lines may stand for billions
        raise JobSpecError([f"sweep: makes {count:,} trials; at most {MAX_TRIALS:,} per sweep"], source)
    values = assignments(settings)
    trials, problems = [], []
    for index, assignment in enumerate(values):
        label = (
            f"trial {index + 1} of {len(values)} ({', '.join(f'{k}={v!r}' for k, v in assignment.items())})"
        )
        try:
            trial_data = base
            for key, value in assignment.items():
                trial_data = apply(trial_data, key, value)
            trials.append(Trial(index, assignment, parse_spec(trial_data, source=label)))
        except ValueError as exc:  # JobSpecError is a ValueError too
            lines = exc.problems if isinstance(exc, JobSpecError) else [str(exc)]
            problems += [f"{label}: {line}" for line in lines]
        if len(problems) >= 20:
            problems.append("… (stopped after 20 problems)")
            break
    if problems:
        raise JobSpecError(problems, source)
    return Sweep(name=trials[0].spec.name, settings=settings, trials=tuple(trials))


def is_sweep_text(text: str) -> bool:
    """Whether a job file's text has a top-level ``sweep:`` section."""
    try:
        data = parse_config_text(text)
    except (yaml.YAMLError, RecursionError):
        return False
    return isinstance(data, dict) and "sweep" in data


def parse_sweep_text(text: str, *, source: str = "job spec") -> Sweep:
    try:
        data = parse_config_text(text)
    except yaml.YAMLError as exc:
        raise JobSpecError([f"not valid YAML/JSON: {yaml_problem(exc)}"], source) from None
    except RecursionError:
        raise JobSpecError([f"nested more than {MAX_SPEC_DEPTH} levels deep"], source) from None
    problem = config_problem(data)
    if problem is not None:
        raise JobSpecError([problem], source)
    return parse_sweep(data, source=source)


def load_job_file(path: str | Path) -> JobSpec | Sweep:
    """A job file as one job, or as a sweep when it has a ``sweep:`` section."""
    from pipeline.jobs import load_spec

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return load_spec(path)  # its error, worded for the user
    if is_sweep_text(text):
        return parse_sweep_text(text, source=str(path))
    return load_spec_text(text, source=str(path))
