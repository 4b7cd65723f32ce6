"""Example models and data for Fitstream, on datasets that scikit-learn ships (no downloads).

The repository keeps them in ``examples/``; installed, they are ``pipeline.examples`` (job specs
name ``pipeline.examples.digits:build_model``). Their one dependency, scikit-learn, is the
``examples`` extra: ``pip install "fitstream[examples]"``.
"""

from __future__ import annotations

from types import ModuleType


def sklearn_datasets() -> ModuleType:
    """``sklearn.datasets``, or an error that says which extra brings it."""
    try:
        from sklearn import datasets
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the bundled examples load scikit-learn's datasets; install them with "
            "pip install 'fitstream[examples]'"
        ) from exc
    return datasets
