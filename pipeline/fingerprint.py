"""A fingerprint of the data a model was trained on, so a promoted model says which data made it.

Arrays (NumPy, or anything ``numpy.asarray`` takes without copying from a device, such as eager
tensors) are hashed with their dtype and shape; a ``tf.data.Dataset``, a generator or a
``PyDataset`` cannot be hashed without consuming it, so their fingerprint is unknown (None).
No TensorFlow is imported here.

Example:
    >>> import numpy as np
    >>> x, y = np.zeros((4, 3), "float32"), np.arange(4)
    >>> fingerprint_data(x, y)[:14]
    'sha256:6d05ff9'
    >>> fingerprint_data(x, y) == fingerprint_data(x.copy(), y.copy())
    True
    >>> fingerprint_data(iter([x])) is None
    True
"""

from __future__ import annotations

import hashlib
from typing import Any

PREFIX = "sha256:"


def fingerprint_data(*parts: Any) -> str | None:
    """``sha256:<hex>`` over the arrays in ``parts`` (nested tuples, lists and dicts of arrays;
    None entries are skipped), or None when any part is not an in-memory array."""
    digest = hashlib.sha256()
    if not _feed(digest, parts):
        return None
    return PREFIX + digest.hexdigest()


def _feed(digest: Any, value: Any) -> bool:
    import numpy as np

    if value is None:
        digest.update(b"none;")
        return True
    if isinstance(value, (tuple, list)):
        digest.update(f"seq{len(value)};".encode())
        return all(_feed(digest, item) for item in value)
    if isinstance(value, dict):
        digest.update(f"map{len(value)};".encode())
        return all(
            digest.update(str(key).encode() + b"=") or _feed(digest, value[key])
            for key in sorted(value, key=str)
        )
    if isinstance(value, np.ndarray) or (
        hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype")
    ):
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype == object:
            return False  # Python objects: their bytes are addresses, not data
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.reshape(-1).view(np.uint8))
        return True
    return False
