"""Promotion: a run's best checkpoint becomes a model version. The promoter consumer and
``fitstream promote`` call :func:`promote_run`.

Modules: ``service`` (the sequence, :func:`promote_run`), ``candidates`` (which checkpoint),
``checkpoint_checks`` and ``load_check`` (is it fit: structure, Keras load in a helper process),
``versions`` (copying it into the store under a new version number), ``registration`` (SQL rows,
aliases, the champion decision), ``locks`` (one promotion per model name at a time) and
``outcome`` (:class:`Promotion`, :class:`PromotionRefusedError`).
"""

import importlib
from typing import Any

#: Where each public name lives. Loaded on first use: the Keras load-check helper process imports
#: ``pipeline.promotion.load_check`` and must not pay for the service, SQLAlchemy and the models.
_EXPORTS = {
    "CHAMPION": "pipeline.promotion.outcome",
    "LATEST": "pipeline.promotion.outcome",
    "Promotion": "pipeline.promotion.outcome",
    "PromotionRefusedError": "pipeline.promotion.outcome",
    "PromotionRefused": "pipeline.promotion.outcome",
    "PromotionLocks": "pipeline.promotion.locks",
    "check_keras_file": "pipeline.promotion.checkpoint_checks",
    "promote_run": "pipeline.promotion.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.promotion' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
