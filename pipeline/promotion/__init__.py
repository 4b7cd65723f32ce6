"""Promotion: which checkpoint of a run becomes a model version (``candidates``), and copying,
registering and moving aliases (``service``). The promoter consumer and ``fitstream promote`` call
:func:`promote_run`."""

from pipeline.promotion.service import (
    CHAMPION,
    LATEST,
    Promotion,
    PromotionLocks,
    PromotionRefused,
    check_keras_file,
    promote_run,
)

__all__ = [
    "CHAMPION",
    "LATEST",
    "Promotion",
    "PromotionLocks",
    "PromotionRefused",
    "check_keras_file",
    "promote_run",
]
