"""PDE-based CNNs {cite}`ruthotto2020deep`: convolutional residual networks read as discretised PDEs.

An image batch ``Y`` of shape ``(batch, width, H, W)`` is a grid function; a convolution ``K`` is a
finite-difference operator (a 3x3 stencil is a combination of first and second derivatives) and its adjoint
``Kᵀ`` is the transposed convolution. Two classes of networks follow from two classes of PDEs:

* parabolic, ``∂_t Y = −Kᵀ σ(N(K Y))``: a nonlinear diffusion. With ``σ`` monotone it is stable and
  smooths; forward Euler gives :class:`ParabolicCNN`, stable for ``h ≤ 2 / (L ‖K‖²)`` (``L`` the
  Lipschitz constant of ``σ∘N``, 1 for ReLU or tanh without normalisation).
* hyperbolic, ``∂²_t Y = −Kᵀ σ(N(K Y))``: a nonlinear wave equation. It conserves an energy and is
  time-reversible; leapfrog gives :class:`HyperbolicCNN`, stable for ``h < 2 / (√L ‖K‖)`` (a CFL condition).

Both are bodies for :class:`dedl.nn.classifier.ImageClassifier` with the leading arguments
``(width, depth, T)`` of :mod:`dedl.nn.stable` (``h = T / depth``). The Hamiltonian CNN of
{cite}`ruthotto2020deep` is :class:`dedl.nn.stable.HamiltonianNet` with ``kind="conv"``.

``stencil`` fixes ``K`` to a hand-made operator instead of learning it: with :func:`gradient_stencil`,
``KᵀK = −Δ`` (the 5-point Laplacian, away from the border), so a parabolic network with ``σ = identity`` is
exactly the explicit heat equation ``Y_{j+1} = Y_j + h ΔY_j`` and a hyperbolic one the wave equation.

Parameter counts (``m`` = output channels of ``K`` = ``hidden``, default ``width``, or ``filters * width``
with a stencil; ``k = kernel_size``): per layer ``m width k²`` for a learned ``K`` (0 with a stencil) plus
``2m`` for ``norm="batch"`` (the affine batch-norm parameters, which play the bias's role) or
``m`` for ``norm=None`` (a bias ``b``), all times ``depth``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from dedl.nn.checks import check_norm, positive_float, positive_int
from dedl.nn.stable import LayerStack, LeapfrogBlock, Operator, SecondOrderBody, zero_bias

#: The normalisations a PDE-CNN layer accepts: batch normalisation, or none.
NORMS = ("batch", None)


def identity(x: Tensor) -> Tensor:
    """``σ(x) = x``: with it and a fixed stencil the networks become the linear heat and wave equations."""
    return x


def gradient_stencil(dtype: torch.dtype | None = None) -> Tensor:
    """Forward differences ``(∂_x, ∂_y)`` as a ``(2, 1, 3, 3)`` stencil for :class:`~dedl.nn.stable.Operator`.

    ``KᵀK = −Δ``, the 5-point Laplacian (unit grid spacing), at every pixel off the border. At the border the
    zero padding sets the boundary condition: no flux across the top and left edges, zero values beyond the
    bottom and right edges. ``‖K‖² < 8``, so the explicit heat step is stable for ``h ≤ 1/4``.
    """
    s = torch.zeros(2, 1, 3, 3, dtype=dtype or torch.get_default_dtype())
    s[0, 0, 1, 1], s[0, 0, 1, 2] = -1.0, 1.0  # u(i, j+1) - u(i, j)
    s[1, 0, 1, 1], s[1, 0, 2, 1] = -1.0, 1.0  # u(i+1, j) - u(i, j)
    return s


class PDEForce(nn.Module):
    """The symmetric force ``Y -> Kᵀ σ(N(K Y))`` of {cite}`ruthotto2020deep` (their eq. for ``F_sym``).

    ``N`` is batch normalisation (``norm="batch"``, with its affine scale and shift) or a bias
    (``norm=None``: ``σ(K Y + b)``). ``K`` is a learned ``kernel_size`` convolution from ``width`` to
    ``hidden`` channels, or the fixed ``stencil`` (see :class:`~dedl.nn.stable.Operator`).
    """

    def __init__(
        self,
        width: int,
        hidden: int | None = None,
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        norm: str | None = "batch",
        stencil: Tensor | None = None,
    ):
        super().__init__()
        check_norm(norm, NORMS)
        self.op = Operator(width, hidden if stencil is None else None, "conv", kernel_size, stencil)
        m = self.op.out_features
        self.norm: nn.Module | None = nn.BatchNorm2d(m) if norm == "batch" else None
        self.bias = zero_bias(m, "conv") if norm is None else None
        self.activation = activation

    def forward(self, y: Tensor) -> Tensor:
        u = self.op(y)
        u = self.norm(u) if self.norm is not None else u + self.bias
        return self.op.adjoint(self.activation(u))


class ParabolicLayer(nn.Module):
    """One forward Euler step of the parabolic PDE: ``Y − h Kᵀσ(N(K Y))`` {cite}`ruthotto2020deep`."""

    def __init__(self, force: PDEForce, h: float):
        super().__init__()
        self.force, self.h = force, positive_float("h", h)

    def forward(self, y: Tensor) -> Tensor:
        return y - self.h * self.force(y)


class ParabolicCNN(LayerStack):
    """Parabolic residual CNN {cite}`ruthotto2020deep`: ``Y_{j+1} = Y_j − h K_jᵀ σ(N(K_j Y_j))``, ``h = T / depth``.

    Forward Euler for the nonlinear diffusion ``∂_t Y = −Kᵀσ(N(KY))``. For monotone ``σ`` with
    ``0 ≤ σ' ≤ L`` the step's Jacobian ``I − h KᵀDK`` is symmetric with eigenvalues in ``[1 − hL‖K‖², 1]``,
    so each layer is non-expansive (a contraction of differences) when ``h ≤ 2 / (L ‖K‖²)``; past that limit
    the highest-frequency mode grows by ``|1 − hL‖K‖²| > 1`` per layer and the network blows up.

    Parameter count: ``depth * (m width k² + 2m)`` with batch norm, ``depth * (m width k² + m)`` without
    (``m = hidden or width``); with a fixed ``stencil`` the ``m width k²`` term is 0 and ``m = filters * width``.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        hidden: int | None = None,
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        norm: str | None = "batch",
        stencil: Tensor | None = None,
    ):
        super().__init__(width, depth, T, "conv")
        self.layers = nn.ModuleList(
            ParabolicLayer(PDEForce(width, hidden, kernel_size, activation, norm, stencil), self.h)
            for _ in range(depth)
        )


class HyperbolicCNN(SecondOrderBody):
    """Hyperbolic (second-order) residual CNN {cite}`ruthotto2020deep`:

    ``Y_{j+1} = 2Y_j − Y_{j−1} − h² K_jᵀ σ(N(K_j Y_j))``,  ``h = T / depth``,  ``Y_{−1} = Y_0``,

    leapfrog for the nonlinear wave equation ``∂²_t Y = −Kᵀσ(N(KY))``. It does not damp: for ``σ = identity``
    it conserves the discrete energy ``‖(Y_{j+1} − Y_j)/h‖² + ⟨Y_{j+1}, KᵀK Y_j⟩``, oscillates instead of
    smoothing, and runs backwards exactly (:meth:`~dedl.nn.stable.ReversibleBody.inverse_pair`), so with
    ``memory_efficient=True`` it trains without storing activations. Stable for ``h < 2 / (√L ‖K‖)``.

    Parameter count: as :class:`ParabolicCNN`.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        hidden: int | None = None,
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        norm: str | None = "batch",
        stencil: Tensor | None = None,
        memory_efficient: bool = False,
    ):
        super().__init__(width, depth, T, "conv", memory_efficient)
        self.blocks = nn.ModuleList(
            LeapfrogBlock(width, self.h, force=PDEForce(width, hidden, kernel_size, activation, norm, stencil))
            for _ in range(depth)
        )


def heat_equation(depth: int, h: float, channels: int = 1) -> ParabolicCNN:
    """The explicit heat equation ``Y_{j+1} = Y_j + h ΔY_j`` as a parameter-free :class:`ParabolicCNN`."""
    return _fixed(ParabolicCNN, depth, h, channels)


def wave_equation(depth: int, h: float, channels: int = 1) -> HyperbolicCNN:
    """The leapfrog wave equation ``Y_{j+1} = 2Y_j − Y_{j−1} + h² ΔY_j`` as a parameter-free :class:`HyperbolicCNN`."""
    return _fixed(HyperbolicCNN, depth, h, channels)


def _fixed(cls: Callable[..., nn.Module], depth: int, h: float, channels: int):
    positive_int("depth", depth)
    net = cls(channels, depth, T=depth * positive_float("h", h), activation=identity, norm=None,
              stencil=gradient_stencil())
    for p in net.parameters():  # the (zero) biases stay zero: this is the PDE, not a model to train
        p.requires_grad_(False)
    return net
