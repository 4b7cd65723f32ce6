"""The alert rules file: its models (channels, rules, their conditions) and how it is read.

Rules file (``FITSTREAM_ALERT_RULES``)::

    channels:
      team-slack: {type: slack, url_env: SLACK_WEBHOOK_URL}
      ops: {type: webhook, url_env: OPS_WEBHOOK_URL, secret_env: OPS_WEBHOOK_SECRET}
      oncall: {type: slack, url_file: /run/secrets/oncall_slack_webhook}
    rules:
      - name: val-loss-high
        match: {job: "digits-*"}
        metric: val_loss
        above: 0.5
        for_epochs: 2
        channels: [team-slack]
      - {name: diverged, nan: loss, channels: [team-slack]}
      - {name: plateau, metric: val_loss, no_improvement_epochs: 5, channels: [team-slack]}
      - {name: overfit, gap: {metric: val_loss, minus: loss, above: 0.3}, for_epochs: 3, channels: [ops]}
      - {name: stalled, stalled_seconds: 600, channels: [ops]}
      - {name: lifecycle, on: [early_stopped, run_failed, model_promoted], channels: [team-slack]}

:func:`load_rules` reads a file and :func:`parse_rules` validates data already read (a job's own
``alerts:``); both raise :class:`RulesError` listing every problem with where it is. How a rule
reacts to events is in :mod:`alerts.rules`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigurationError
from pipeline.jobs import config_problem, parse_config_text, yaml_problem
from pipeline.monitor import infer_mode

#: Event types a lifecycle rule may name in ``on:``; ``run_pruned`` is a ``run_finished`` whose status is pruned.
LIFECYCLE_EVENTS = (
    "run_started",
    "early_stopped",
    "run_failed",
    "run_finished",
    "run_pruned",
    "model_promoted",
    "promotion_skipped",
)


class RulesError(ConfigurationError):
    """The rules file is invalid. Not retryable: fix what the message lists."""


def _clip(text: str, limit: int = 80) -> str:
    """``text`` as an error quotes it: at most ``limit`` characters (a name may be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _shown(value: Any) -> str:
    return _clip(repr(value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Channel(_Strict):
    """Where alerts go. The URL (and a webhook's HMAC secret) never appear in the rules file: they
    come from an environment variable (``url_env``) or a file (``url_file``, e.g. a Docker or
    Kubernetes secret mounted at ``/run/secrets/…``)."""

    type: Literal["slack", "webhook"]
    url_env: str | None = Field(
        default=None, min_length=1, description="Environment variable holding the URL."
    )
    url_file: str | None = Field(
        default=None, min_length=1, description="File holding the URL (a mounted secret)."
    )
    secret_env: str | None = Field(
        default=None, min_length=1, description="Webhook only: variable holding the HMAC secret."
    )
    secret_file: str | None = Field(
        default=None, min_length=1, description="Webhook only: file holding the HMAC secret."
    )
    rate_per_minute: int = Field(default=60, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_the_file(cls, data: Any) -> Any:
        """A URL or secret written in the file is refused with what to write instead, never quoted
        (the error is logged): an unknown ``url:`` key alone would only say "Extra inputs", and a URL
        given as ``url_env`` would reach the alerter's start-up error, and so its log, in full."""
        if not isinstance(data, dict):
            return data
        written = (("url", "URL", "url_env or url_file"), ("secret", "secret", "secret_env or secret_file"))
        for key, what, sources in written:
            if key in data:
                raise ValueError(
                    f"{key}: a channel's {what} is never written in the rules file; name the environment variable "
                    f"or the secrets file that holds it with {sources}"
                )
        for key in ("url_env", "url_file", "secret_env", "secret_file"):
            if isinstance(data.get(key), str) and "://" in data[key]:
                raise ValueError(
                    f"{key} holds a URL; it names the environment variable or the secrets file that holds the "
                    "value (e.g. url_env: SLACK_WEBHOOK_URL), never the value itself"
                )
        return data

    @model_validator(mode="after")
    def _one_source_each(self) -> Channel:
        if (self.url_env is None) == (self.url_file is None):
            raise ValueError(
                "give the URL's source as exactly one of url_env (a variable) or url_file (a secrets file)"
            )
        if (self.secret_env or self.secret_file) and self.type != "webhook":
            raise ValueError("secret_env / secret_file are only for type: webhook")
        if self.secret_env and self.secret_file:
            raise ValueError("give the secret as secret_env or secret_file, not both")
        return self


class Match(_Strict):
    job: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class Gap(_Strict):
    metric: str
    minus: str
    above: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _two_metrics(self) -> Gap:
        if self.metric == self.minus:  # their gap is always 0: the rule could never change state
            raise ValueError(f"metric and minus are both {_shown(self.metric)}; a gap is between two metrics")
        return self


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=200)
    match: Match = Field(default_factory=Match)
    channels: list[str] = Field(min_length=1)
    severity: Literal["info", "warning", "critical"] = "warning"
    repeat_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # conditions (exactly one kind); thresholds are finite: NaN or an infinity could never be crossed
    metric: str | None = None
    above: float | None = Field(default=None, allow_inf_nan=False)
    below: float | None = Field(default=None, allow_inf_nan=False)
    for_epochs: int = Field(default=1, ge=1)
    nan: str | None = None
    no_improvement_epochs: int | None = Field(default=None, ge=1)
    mode: Literal["auto", "min", "max"] = "auto"
    min_delta: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    gap: Gap | None = None
    stalled_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    on: (
        list[
            Literal[
                "run_started",
                "early_stopped",
                "run_failed",
                "run_finished",
                "run_pruned",
                "model_promoted",
                "promotion_skipped",
            ]
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_condition(self) -> Rule:
        kinds = [
            k
            for k, present in (
                ("threshold", self.above is not None or self.below is not None),
                ("nan", self.nan is not None),
                ("no_improvement", self.no_improvement_epochs is not None),
                ("gap", self.gap is not None),
                ("stalled", self.stalled_seconds is not None),
                ("lifecycle", self.on is not None),
            )
            if present
        ]
        if len(kinds) != 1:
            raise ValueError(
                "a rule needs exactly one condition: above/below, nan, no_improvement_epochs, gap, "
                f"stalled_seconds or on; got {kinds or 'none'}"
            )
        if kinds[0] in ("threshold", "no_improvement") and not self.metric:
            raise ValueError(f"a {kinds[0]} rule needs metric")
        if self.above is not None and self.below is not None:
            raise ValueError("use either above or below, not both")
        if kinds[0] == "no_improvement" and self.mode == "auto":
            try:
                infer_mode(self.metric or "")
            except ConfigurationError:
                raise ValueError(
                    f"rule {_shown(self.name)}: cannot tell whether {_shown(self.metric)} should be minimised or "
                    "maximised; add mode: min or mode: max to the rule"
                ) from None
        return self

    @property
    def kind(self) -> str:
        if self.above is not None or self.below is not None:
            return "threshold"
        if self.nan is not None:
            return "nan"
        if self.no_improvement_epochs is not None:
            return "no_improvement"
        if self.gap is not None:
            return "gap"
        if self.stalled_seconds is not None:
            return "stalled"
        return "lifecycle"

    def matches(self, name: str | None, tags: dict[str, str]) -> bool:
        if self.match.job is not None and (name is None or not fnmatch.fnmatchcase(name, self.match.job)):
            return False
        return all(tags.get(k) == v for k, v in self.match.tags.items())


class RulesFile(_Strict):
    channels: dict[str, Channel] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_channels(self) -> RulesFile:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {_clip(', '.join(duplicates), 200)}")
        for rule in self.rules:
            unknown = [c for c in rule.channels if c not in self.channels]
            if unknown:
                raise ValueError(
                    f"rule {_shown(rule.name)} uses unknown channel(s) {_clip(', '.join(unknown), 200)}; "
                    f"defined channels: {_clip(', '.join(self.channels), 200) or '(none)'}"
                )
        return self


def _yaml_on_key(rule: Any) -> Any:
    """YAML 1.1 reads a bare ``on:`` key as the boolean true; the contract spells it ``on``."""
    if isinstance(rule, dict) and True in rule and "on" not in rule:
        rule = {("on" if k is True else k): v for k, v in rule.items()}
    return rule


#: A rules file is read like a job spec (see :func:`pipeline.jobs.config_problem`), with room for many rules.
MAX_RULES_FILE_VALUES = 1_000_000
#: Problems listed in one error at most (a file of a thousand bad rules says how many more).
MAX_PROBLEMS_SHOWN = 20


def _key(part: Any, limit: int = 80) -> str:
    """A key as an error names it: as written, or quoted when it is empty, holds a dot (the separator
    of a key path), something unprintable (a line break would split the error) or blanks at an end,
    or is long."""
    text = str(part)
    plain = text and text.isprintable() and "." not in text and text.strip() == text and len(text) <= limit
    return text if plain else _clip(repr(text), limit)


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """An error's location, naming the rule when the rule has a name: ``rules.3 (val-loss-high).above``."""
    parts = [_key(p) for p in loc]
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int) and isinstance(data, dict):
        rule = (
            data["rules"][loc[1]]
            if isinstance(data.get("rules"), list) and loc[1] < len(data["rules"])
            else None
        )
        if isinstance(rule, dict) and isinstance(rule.get("name"), str) and rule["name"]:
            name = rule["name"]
            parts[1] = (
                f"{loc[1]} ({name if name.isprintable() and len(name) <= 60 else _clip(repr(name), 60)})"
            )
    return ".".join(parts) or "(top level)"


def parse_rules(data: Any, *, source: str = "rules file") -> RulesFile:
    if data is None:
        data = {}
    problem = config_problem(data, max_values=MAX_RULES_FILE_VALUES)
    if problem is not None:
        raise RulesError(f"{source} is invalid:\n  - {problem}")
    if isinstance(data, dict) and isinstance(data.get("rules"), list):
        data = {**data, "rules": [_yaml_on_key(r) for r in data["rules"]]}
    try:
        return RulesFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [
            f"  - {_where(err['loc'], data)}: {err['msg'].removeprefix('Value error, ')}"
            for err in errors[:MAX_PROBLEMS_SHOWN]
        ]
        if len(errors) > MAX_PROBLEMS_SHOWN:
            problems.append(f"  - … and {len(errors) - MAX_PROBLEMS_SHOWN} more")
        raise RulesError(f"{source} is invalid:\n" + "\n".join(problems)) from None


def load_rules(path: str | Path) -> RulesFile:
    path = Path(path)
    try:
        data = parse_config_text(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"cannot read the rules file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # a NUL in the path: no file has that name
        raise RulesError(f"cannot read the rules file {_clip(repr(str(path)))}: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise RulesError(f"{path} is nested too deeply to be a rules file") from None
    return parse_rules(data, source=str(path))
