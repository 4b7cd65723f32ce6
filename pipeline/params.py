"""A run's parameters — what was tried — as flat ``dotted.key → value`` pairs (no TensorFlow here).

Queued jobs get theirs from the job spec (``model.kwargs.hidden``, ``fit.batch_size``,
``early_stopping.patience`` …) and from the optimizer's Keras config (``optimizer.learning_rate``);
people's own scripts from ``EventPublisher(params={...})``. Nested mappings are flattened with
dots; a list stays one value (its JSON text). The recorder writes each pair as a row of the
``params`` table: ``value`` as text, ``value_num`` when the value is a finite number.

Example:
    >>> flatten_params({"model": {"kwargs": {"hidden": 64, "dropout": 0.2}}, "fit": {"batch_size": 32}})
    {'model.kwargs.hidden': 64, 'model.kwargs.dropout': 0.2, 'fit.batch_size': 32}
    >>> param_row("optimizer.learning_rate", 0.001)
    ('optimizer.learning_rate', '0.001', 0.001)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

#: A parameter's value as events carry it: a scalar (a list is carried as its JSON text).
ParamValue = str | int | float | bool | None

#: Bounds on what one run may carry (its run_queued / run_started event carries them all).
MAX_PARAMS = 1_000
MAX_KEY_LENGTH = 200
MAX_VALUE_LENGTH = 2_000

#: Job-spec sections that are not hyperparameters: the name, labels, where it runs and its alerts.
NOT_PARAMETERS = frozenset({"name", "tags", "queue", "alerts", "promote"})


class ParamsError(ConfigurationError):
    """Parameters past the bounds above, or not made of JSON values. Not retryable."""


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, ParamValue]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, checked against the bounds.

    Raises:
        ParamsError: more than :data:`MAX_PARAMS` keys, a key or value too long, two keys that
            flatten to the same name, or a value that is not JSON (a set, an object, …), each named.
    """
    flat = _flatten_all(params, prefix)
    if len(flat) > MAX_PARAMS:
        raise ParamsError(
            f"{len(flat):,} parameters; a run may carry at most {MAX_PARAMS:,} (flatten less, or drop some)"
        )
    for key, value in flat.items():
        if len(key) > MAX_KEY_LENGTH:
            raise ParamsError(
                f"parameter name {key[:60]!r}… is {len(key)} characters; at most {MAX_KEY_LENGTH}"
            )
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            raise ParamsError(
                f"parameter {key!r} is {len(value):,} characters long; at most {MAX_VALUE_LENGTH:,}"
            )
    return flat


def _flatten_all(
    node: Mapping[str, Any], prefix: str, flat: dict[str, ParamValue] | None = None
) -> dict[str, ParamValue]:
    flat = {} if flat is None else flat
    if not isinstance(node, Mapping):
        raise ParamsError(f"parameters must be a mapping of names to values; got {type(node).__name__}")
    for raw_key, value in node.items():
        if not isinstance(raw_key, str) or not raw_key:
            raise ParamsError(
                f"parameter names must be non-empty text; got {raw_key!r} under {prefix or 'the top level'!r}"
            )
        key = f"{prefix}{raw_key}"
        if isinstance(value, Mapping):
            if value:
                _flatten_all(value, key + ".", flat)
            continue
        if key in flat:
            raise ParamsError(f"parameter {key!r} is given twice (once as a dotted name, once nested)")
        if len(flat) > 10 * MAX_PARAMS:  # enough to word the error; stop walking a huge mapping
            break
        flat[key] = _scalar(key, value)
    return flat


def _scalar(key: str, value: Any) -> ParamValue:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # a NumPy array or scalar
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        try:
            return json.dumps(list(value), allow_nan=False)
        except (TypeError, ValueError):
            raise ParamsError(
                f"parameter {key!r}: a list of JSON values (finite numbers) is allowed; got {value!r:.80}"
            ) from None
    if isinstance(value, float) and not math.isfinite(value):
        return (
            "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        )  # text: JSON cannot carry them
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ParamsError(
        f"parameter {key!r}: must be text, a number, true/false, null or a list; got {type(value).__name__}"
    )


def param_row(key: str, value: ParamValue) -> tuple[str, str | None, float | None]:
    """(key, value as text, value as a number or None) — a row of the ``params`` table.

    Text is the value itself; anything else is its JSON (``true``, ``32``, ``[64, 32]``).
    """
    if isinstance(value, str):
        return key, value, None
    text = json.dumps(value)
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    except OverflowError:  # an integer beyond any float: text only
        number = None
    return key, text, number if number is not None and math.isfinite(number) else None


def spec_params(spec_dump: Mapping[str, Any]) -> dict[str, ParamValue]:
    """The parameters of a job spec (its ``model_dump(mode="json", by_alias=True)``): every
    section but :data:`NOT_PARAMETERS`, flattened; a section that is off (``null``) is one
    ``null`` parameter, so that "runs without early stopping" is a query too.

    A valid job is never refused for its parameters: past the bounds, a long value is cut (and says
    so), a long name and the parameters after the first :data:`MAX_PARAMS` are left out.

    Example:
        >>> spec_params({"name": "x", "fit": {"epochs": 3}, "reduce_lr": None, "tags": {"a": "b"}})
        {'fit.epochs': 3, 'reduce_lr': None}
    """
    flat = _flatten_all({k: v for k, v in spec_dump.items() if k not in NOT_PARAMETERS}, "")
    kept: dict[str, ParamValue] = {}
    for key, value in flat.items():
        if len(kept) >= MAX_PARAMS or len(key) > MAX_KEY_LENGTH:
            continue
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            value = value[: MAX_VALUE_LENGTH - 40] + f"… ({len(value):,} characters)"
        kept[key] = value
    return kept


def run_params(
    optimizer: dict[str, Any] | None, given: dict[str, Any], *, fit: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``run_started``'s parameters: ``fit.epochs`` and ``fit.batch_size`` (as a queued job's spec
    names them), the optimizer's class and Keras config under ``optimizer.``, then what the caller
    gave (which wins on a clash)."""
    found: dict[str, Any] = {f"fit.{k}": v for k, v in (fit or {}).items() if v is not None}
    if optimizer:
        try:
            found.update(
                flatten_params(
                    {
                        "optimizer": {
                            "class_name": optimizer.get("class_name"),
                            **(optimizer.get("config") or {}),
                        }
                    }
                )
            )
        except ParamsError as exc:
            log.warning("fitstream: the optimizer's config is not recorded as parameters: %s", exc)
    merged = {**found, **given}
    if len(merged) > len(given) and len(merged) > MAX_PARAMS:
        merged = dict(given)  # the caller's own come first
    return merged
