"""Which of a run's checkpoints to promote: the file ModelCheckpoint kept, judged by its own rule.

The candidates are the run's ``checkpoint_saved`` facts. Files ModelCheckpoint wrote come first
(the user said what to keep); the model EarlyStopping restored, saved at the end of training,
is the fallback when none of them can be promoted. Within each group the candidates are ranked
best first by the checkpoint's own monitor and mode (carried by its event); the promoter then
takes the first whose file is still intact (its sha256 matches the event's).

Example:
    >>> saved = [Candidate(epoch=0, path="a.keras", monitor="val_f1", mode="max", value=0.7, sha256="…", seq=3),
    ...          Candidate(epoch=1, path="b.keras", monitor="val_f1", mode="max", value=0.9, sha256="…", seq=5)]
    >>> [c.path for c, _rule in rank_candidates(saved).ranked]
    ['b.keras', 'a.keras']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.errors import ConfigurationError
from pipeline.monitor import Monitor

MODEL_CHECKPOINT = "model_checkpoint"
EARLY_STOPPING_RESTORE = "early_stopping_restore"


@dataclass(frozen=True)
class Candidate:
    """A checkpoint file a run reported (a row of ``promoter_checkpoints``)."""

    epoch: int
    path: str
    monitor: str | None
    mode: str | None
    value: float | None
    sha256: str | None
    seq: int | None = None
    source: str | None = MODEL_CHECKPOINT
    batch: int | None = None

    @property
    def where(self) -> str:
        at = f"epoch {self.epoch}" + (f", batch {self.batch}" if self.batch is not None else "")
        return f"{self.path} ({at})"


@dataclass(frozen=True)
class Ranking:
    """Candidates best first, each with the rule that ranked it, and why others were left out."""

    ranked: list[tuple[Candidate, Monitor]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _rule(candidate: Candidate, known_modes: Mapping[str, str]) -> Monitor:
    return Monitor.from_event(candidate, known_mode=known_modes.get(candidate.monitor or ""))


def _group_rank(
    candidates: list[Candidate], known_modes: Mapping[str, str], prefer_monitor: str | None, notes: list[str]
) -> list[tuple[Candidate, Monitor]]:
    usable: list[tuple[Candidate, Monitor]] = []
    for candidate in candidates:
        try:
            usable.append((candidate, _rule(candidate, known_modes)))
        except ConfigurationError as exc:
            notes.append(f"{candidate.where}: {exc}")
    if not usable:
        return []
    monitors = {rule.metric for _c, rule in usable}
    if len(monitors) > 1:  # several ModelCheckpoints: the one watching the trigger's metric, else the latest
        newest = max(usable, key=lambda item: (item[0].seq or 0, item[0].epoch))[1].metric
        chosen = prefer_monitor if prefer_monitor in monitors else newest
        usable = [(c, r) for c, r in usable if r.metric == chosen]
    valued = [(c, r) for c, r in usable if c.value is not None and c.value == c.value]
    unvalued = [(c, r) for c, r in usable if (c, r) not in valued]
    # Keras keeps the first of equal values (a strict improvement rule): earlier first among ties.
    valued.sort(
        key=lambda item: (
            item[0].value if item[1].mode == "min" else -item[0].value,
            item[0].seq or 0,
            item[0].epoch,
        )
    )  # type: ignore[operator]
    unvalued.sort(key=lambda item: (item[0].seq or 0, item[0].epoch), reverse=True)  # newest first
    return valued + unvalued


def rank_candidates(
    candidates: Iterable[Candidate],
    *,
    known_modes: Mapping[str, str] | None = None,
    prefer_monitor: str | None = None,
) -> Ranking:
    """ModelCheckpoint's files best first by their own rule, then EarlyStopping's restored model.

    ``known_modes`` (monitor → mode, from the run's ``run_started``) gives the direction for
    events from before checkpoints carried their mode.
    """
    known_modes = known_modes or {}
    notes: list[str] = []
    candidates = list(candidates)
    kept = [c for c in candidates if (c.source or MODEL_CHECKPOINT) != EARLY_STOPPING_RESTORE]
    restored = [c for c in candidates if c.source == EARLY_STOPPING_RESTORE]
    ranked = _group_rank(kept, known_modes, prefer_monitor, notes) + _group_rank(
        restored, known_modes, prefer_monitor, notes
    )
    return Ranking(ranked, notes)
