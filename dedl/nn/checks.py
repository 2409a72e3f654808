"""Argument checks shared by the models of :mod:`dedl.nn`.

The models of :mod:`dedl.nn.resnets`, :mod:`dedl.nn.stable`, :mod:`dedl.nn.pde` and :mod:`dedl.nn.odenets` check
their widths, depths, step sizes, kinds and inputs with these functions, so that bad input raises a ``TypeError``
or ``ValueError`` that names the argument and the problem, never a silent NaN or a shape error deep inside
PyTorch. Each check returns the value it accepted, so that it can be used inline:
``self.depth = positive_int("depth", depth)``.

One exception type for one kind of mistake, in every model: an argument or input of the wrong *type* (not an
``int``, not a number, not a ``Tensor``, not floating point) raises ``TypeError``; one of the right type with a
wrong *value* (out of range, an unknown ``kind`` or ``norm``, a wrong shape) raises ``ValueError``.
"""

from __future__ import annotations

import math
from numbers import Real

from torch import Tensor

KINDS = ("conv", "linear")
"""The two kinds of state: ``"conv"``, images ``(batch, width, H, W)``; ``"linear"``, vectors ``(batch, width)``."""


def positive_int(name: str, value: int, *, allow_zero: bool = False) -> int:
    """``value`` if it is an ``int`` ``>= 1`` (``>= 0`` with ``allow_zero``): a width, a depth, a count.

    Raises ``TypeError`` for anything but an ``int`` (``bool`` included) and ``ValueError`` below the minimum.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    minimum = 0 if allow_zero else 1
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def positive_float(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``float(value)`` if it is a finite real number ``> 0`` (``>= 0`` with ``allow_zero``): a step, a horizon.

    Raises ``TypeError`` for anything but a real number (``bool`` included) and ``ValueError`` for a value that
    is not finite or too small.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def probability(name: str, value: float, *, allow_zero: bool, allow_one: bool) -> float:
    """``float(value)`` if it lies in the interval between 0 and 1, each end closed only when allowed.

    Raises ``TypeError`` for anything but a real number (``bool`` included) and ``ValueError`` outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (math.isfinite(value) and low_ok and high_ok):
        lo, hi = ("[" if allow_zero else "("), ("]" if allow_one else ")")
        raise ValueError(f"{name} must lie in {lo}0, 1{hi}, got {value}")
    return value


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def check_norm(norm: str | None, allowed: tuple[str | None, ...]) -> str | None:
    """``norm`` if it is one of ``allowed``: the normalisation switch of every model of :mod:`dedl.nn`.

    Every model spells it ``norm``, a string naming the normalisation (``"batch"``, ``"group"``) or ``None`` for
    none; each states the values it supports. Anything else raises a ``ValueError`` (a ``bool`` included).
    """
    if isinstance(norm, bool) or norm not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}")
    return norm


def check_kernel_size(kernel_size: int, kind: str) -> int:
    """``kernel_size`` if it is a positive int, and odd for ``kind="conv"``.

    An odd ``k`` with zero padding ``k // 2`` keeps the image size, so a residual ``x + h f(x)`` is defined.
    """
    positive_int("kernel_size", kernel_size)
    if kind == "conv" and kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so that a convolution keeps the image size, got {kernel_size}")
    return kernel_size


def check_image_or_vector(x: Tensor, kind: str, width: int) -> Tensor:
    """``x`` if it is a floating-point batch of ``width``-channel images (``kind="conv"``) or vectors (``"linear"``).

    The shapes are ``(batch, width, H, W)`` and ``(batch, width)``; anything else raises a ``TypeError`` (not a
    floating-point tensor) or a ``ValueError`` that states the expected and the actual shape.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a Tensor, got {type(x).__name__}")
    ndim, layout = (4, "(batch, channels, height, width)") if kind == "conv" else (2, "(batch, features)")
    if x.dim() != ndim:
        raise ValueError(f"expected a {ndim}-D input {layout} for kind={kind!r}, got shape {tuple(x.shape)}")
    if x.shape[1] != width:
        raise ValueError(f"expected {width} channels/features in dimension 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input, got {x.dtype}")
    return x
