"""Is a checkpoint fit to become a model version? Its ``.keras`` structure, read without TensorFlow
(:func:`check_keras_file`), and a Keras load with ``safe_mode=True`` in the helper process of
:mod:`pipeline.promotion.load_check` (:func:`loads_in_keras`). Its sha256 is checked while it is
copied (:mod:`pipeline.promotion.versions`).

Example:
    >>> check_keras_file("/runs/r1/best.weights.h5")
    Traceback (most recent call last):
        ...
    pipeline.promotion.outcome.PromotionRefusedError: /runs/r1/best.weights.h5 holds weights only ...
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable

from pipeline.promotion.load_check import KerasLoadCheck, file_identity
from pipeline.promotion.outcome import PromotionRefusedError


def check_keras_file(path: str) -> None:
    """A ``.keras`` file is a zip holding config.json and the weights (checked without TensorFlow)."""
    if path.endswith(".weights.h5"):
        raise PromotionRefusedError(
            f"{path} holds weights only (save_weights_only=True), not a model that can be loaded"
        )
    if path.endswith(".h5"):
        return  # legacy H5: checked by its sha256 only
    try:
        # The central directory only: the content is verified by sha256 while it is copied,
        # so the file is read once (testzip() would read it all a second time).
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except FileNotFoundError:
        raise PromotionRefusedError(f"checkpoint missing: {path}") from None
    except zipfile.BadZipFile:
        raise PromotionRefusedError(f"{path} is not a Keras .keras file (not a zip archive)") from None
    if "config.json" not in names or not any(n.endswith(".weights.h5") or n.endswith(".h5") for n in names):
        raise PromotionRefusedError(
            f"{path} is not a complete Keras model file (has: {', '.join(sorted(names)) or 'nothing'})"
        )


def loads_in_keras(path: str, load_check: KerasLoadCheck) -> Callable[[], None]:
    """Start loading ``path`` now, unless it was loaded as it is (on its ``checkpoint_saved``);
    the returned check waits for the answer and refuses a file that did not load or changed."""
    pending = load_check.submit(path)
    if pending.identity is None:
        raise PromotionRefusedError(f"checkpoint missing: {path}")

    def check() -> None:
        problem = load_check.result(pending)
        if problem is not None:
            raise PromotionRefusedError(f"{path} does not load in Keras with safe_mode=True: {problem}")
        if file_identity(path) != pending.identity:
            raise PromotionRefusedError(
                f"{path} changed while it was being promoted; promote it again with: fitstream promote RUN"
            )

    return check
