"""The models the fit-overhead benchmarks train: ``--workload digits`` (the default) or ``convnet``.

Not a benchmark itself. ``digits`` is the MLP of ``examples/digits.py`` on scikit-learn's bundled
digits (45 batches of 32 per epoch): on a CPU a step takes about a millisecond, so the publisher's
per-epoch work is a visible share of an epoch. ``convnet`` is big enough to keep a GPU busy: a
six-layer CNN (about 1.2 M parameters) on synthetic 32×32×3 images with a learnable label (the
class is the quadrant-and-channel of the brightest blob), batch 128, 64 batches per epoch. On a
GPU a step takes milliseconds, which is where a callback's per-batch work shows. The data are
generated from a fixed seed, so every fit sees the same samples; nothing is downloaded.

Example::

    >>> workload = get("digits")
    >>> workload.batch_size, workload.steps_per_epoch
    (32, 45)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    batch_size: int
    data: tuple[tuple[Any, Any], tuple[Any, Any]]  # (x, y), (x_val, y_val)
    build_model: Callable[[], Any]  # a freshly built, compiled, identically seeded keras.Model

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.data[0][0]) // self.batch_size)


def _digits() -> Workload:
    from pipeline.examples import digits

    return Workload(
        "digits",
        "digits MLP hidden=64 (examples/digits.py), 1,437 train / 360 val samples",
        32,
        digits.load_data(),
        digits.build_model,
    )


def synthetic_images(
    count: int, seed: int, size: int = 32, classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with one bright blob; the label is where the blob is and in which channel."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, size=(count, size, size, 3)).astype("float32")
    y = rng.integers(0, classes, size=count)
    half = size // 2
    for i, label in enumerate(y):
        quadrant, channel = int(label) % 4, int(label) % 3
        top, left = (quadrant // 2) * half, (quadrant % 2) * half
        r, c = top + rng.integers(2, half - 6), left + rng.integers(2, half - 6)
        x[i, r : r + 4, c : c + 4, channel] += 2.0 + 0.5 * (int(label) // 4)
    return x, y.astype("int32")


def build_convnet(seed: int = 0):  # -> keras.Model
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3)),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(256, 3, padding="same", activation="relu"),
            layers.Conv2D(256, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, activation="softmax"),
        ],
        name="bench_convnet",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def _convnet() -> Workload:
    return Workload(
        "convnet",
        "convnet 6×Conv2D 64-256 (~1.2 M params), synthetic 32×32×3, 8,192 train / 1,024 val samples",
        128,
        (synthetic_images(8192, seed=1), synthetic_images(1024, seed=2)),
        build_convnet,
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {"digits": _digits, "convnet": _convnet}


def get(name: str) -> Workload:
    try:
        return WORKLOADS[name]()
    except KeyError:
        raise SystemExit(f"unknown workload {name!r}: choose one of {', '.join(WORKLOADS)}") from None


def accelerator_line() -> str:
    """Keras' backend and the device it trains on (a GPU's name when there is one)."""
    import keras

    backend = keras.backend.backend()
    devices = "?"
    try:
        if backend == "jax":
            import jax

            devices = ", ".join(
                sorted({f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()})
            )
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            devices = (
                ", ".join(
                    tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
                )
                or "cpu"
            )
        elif backend == "torch":
            import torch

            devices = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # a report line must never stop a benchmark
        devices = f"? ({exc})"
    return f"keras {keras.__version__}, backend {backend}, device {devices}"
