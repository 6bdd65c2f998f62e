"""Checks of user input written once: integer options and dtype names.

Every check raises ``ValueError`` naming the field, the value and what is allowed, e.g.
``kv_cache_quantization.group_size=0 must be a positive integer``. A ``bool`` is never an integer here
(Python counts ``True`` as ``1``; ``--n_query_groups true`` is a mistake, not one group). Nothing here imports
torch at import time (``litgpt-mka compare --help`` reads :data:`DtypeName`).
"""

from typing import Any, Literal, get_args

# floating dtypes of weights, activations and the KV cache at inference, by their torch attribute name
DtypeName = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_in_range(
    field: str,
    value: Any,
    low: int = 1,
    high: int | None = None,
    *,
    high_name: str = "",
    allow_none: str | None = None,
    note: str = "",
) -> None:
    """Raises ``ValueError`` naming `field` unless `value` is an integer (bools are not) in ``[low, high]``.

    The message says what is allowed: "a positive integer" (``low`` 1, no ``high``), "a non-negative integer"
    (``low`` 0, no ``high``), else "an integer in [low, high]" (``high_name``: what ``high`` is, printed as
    ``[1, n_head=4]``); then ", or null for ALLOW_NONE" where ``None`` is allowed, then `note`.

    Args:
        field: The option or config key, as the user writes it.
        value: The value given.
        low: The smallest value allowed.
        high: The largest value allowed; None: no bound.
        high_name: What `high` is (another field's name), said in the message.
        allow_none: What ``None`` means, if ``None`` is allowed.
        note: Said after the allowed range, e.g. `` (0: no residual window)``.

    Raises:
        ValueError: `value` is not an integer in range (and not an allowed ``None``).
    """
    if value is None and allow_none is not None:
        return
    if is_int(value) and value >= low and (high is None or value <= high):
        return
    if high is not None:
        allowed = f"an integer in [{low}, {f'{high_name}=' if high_name else ''}{high}]"
    elif low in (0, 1):
        allowed = "a positive integer" if low == 1 else "a non-negative integer"
    else:
        allowed = f"an integer >= {low}"
    alternative = f", or null for {allow_none}" if allow_none is not None else ""
    raise ValueError(f"{field}={value!r} must be {allowed}{alternative}{note}")


def positive_int(field: str, value: Any, *, allow_none: str | None = None) -> None:
    """Raises ``ValueError`` naming `field` unless `value` is a positive integer (bools are not).

    ``allow_none``: what ``None`` means, if ``None`` is allowed (said in the message).
    """
    int_in_range(field, value, 1, allow_none=allow_none)


def torch_dtype(field: str, name: str):
    """``"bfloat16"`` -> ``torch.bfloat16`` for the names of :data:`DTYPE_NAMES`.

    Raises:
        ValueError: another name, naming `field`.
    """
    if name not in DTYPE_NAMES:
        raise ValueError(f"{field}={name!r} is not one of {DTYPE_NAMES}")
    import torch

    return getattr(torch, name)
