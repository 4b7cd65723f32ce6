"""Promotion: a run's best checkpoint becomes a model version. The promoter consumer and
``fitstream promote`` call :func:`promote_run`.

Modules: ``service`` (the sequence, :func:`promote_run`), ``candidates`` (which checkpoint),
``checkpoint_checks`` and ``load_check`` (is it fit: structure, Keras load in a helper process),
``versions`` (copying it into the store under a new version number), ``registration`` (SQL rows,
aliases, the champion decision), ``locks`` (one promotion per model name at a time) and
``outcome`` (:class:`Promotion`, :class:`PromotionRefused`).
"""

from pipeline.promotion.checkpoint_checks import check_keras_file
from pipeline.promotion.locks import PromotionLocks
from pipeline.promotion.outcome import CHAMPION, LATEST, Promotion, PromotionRefused
from pipeline.promotion.service import promote_run

__all__ = [
    "CHAMPION",
    "LATEST",
    "Promotion",
    "PromotionLocks",
    "PromotionRefused",
    "check_keras_file",
    "promote_run",
]
