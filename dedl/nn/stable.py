"""Stable and reversible architectures: residual networks whose forward propagation is a stable ODE solver.

Every body in this module is a discretisation of an ODE on ``[0, T]`` with step ``h = T / depth``, and
each is built with the same leading arguments ``(width, depth, T)``:

* :class:`AntisymmetricResNet` {cite}`haber2017stable`: ``Y_{j+1} = Y_j + h σ((W_j − W_jᵀ − γI) Y_j + b_j)``
* :class:`HamiltonianNet` {cite}`chang2018reversible`: ``y_{j+1} = y_j + h K_{j1}ᵀσ(K_{j1} z_j + b_{j1})``,
  ``z_{j+1} = z_j − h K_{j2}ᵀσ(K_{j2} y_{j+1} + b_{j2})``
* :class:`LeapfrogNet` {cite}`chang2018reversible`: ``Y_{j+1} = 2Y_j − Y_{j−1} − h² K_jᵀσ(K_j Y_j + b_j)``
* :class:`RevNet` {cite}`gomez2017reversible`: ``y₁ = x₁ + h F_j(x₂)``, ``y₂ = x₂ + h G_j(y₁)``

``kind="conv"`` makes every ``K`` a ``kernel_size`` x ``kernel_size`` convolution (stride 1, zero padding)
acting on ``(batch, width, H, W)`` and ``Kᵀ`` the transposed convolution with the same weights, which is its
exact adjoint; ``kind="linear"`` makes ``K`` a matrix acting on ``(batch, width)``. Any of the bodies fits
:class:`dedl.nn.classifier.ImageClassifier`::

    ImageClassifier(HamiltonianNet(width=16, depth=4), in_channels=1, width=16, num_classes=10)

Parameter counts (``k = kernel_size`` for ``kind="conv"``, ``k = 1`` for ``kind="linear"``; ``c = width // 2``;
``m`` = ``hidden`` where the body has one, ``width`` or ``c`` by default as stated):

* ``AntisymmetricResNet``: ``depth * (width² k² + width)``
* ``HamiltonianNet``: ``depth * 2 * (m c k² + m)``, default ``m = c``
* ``LeapfrogNet``: ``depth * (m width k² + m)``, default ``m = width``
* ``RevNet`` (default residual functions): ``depth * 2 * (2 m c k² + m + c)``, default ``m = c``

The reversible bodies (``HamiltonianNet``, ``LeapfrogNet``, ``RevNet``) can train with
``memory_efficient=True``: the forward pass keeps no activations and the backward pass rebuilds each layer's
input from its output with the exact inverse (:func:`reversible_sequence`), so the memory for
backpropagation does not grow with depth {cite}`gomez2017reversible`.

:class:`AntisymmetricRNN` is the recurrent relative: ``h_t = h_{t−1} + ε σ((W − Wᵀ − γI) h_{t−1} + V x_t + b)``
{cite}`chang2019antisymmetricrnn`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dedl.nn.checks import (
    KINDS,  # noqa: F401 (kept public as dedl.nn.stable.KINDS)
    check_image_or_vector,
    check_kernel_size,
    check_kind,
    positive_float,
    positive_int,
)


def _check_even(width: int) -> int:
    """``width`` if it is a positive even int: the two-stream bodies split the state into halves."""
    positive_int("width", width)
    if width % 2:
        raise ValueError(f"width must be even: the state is split into two halves of width // 2, got {width}")
    return width


# --------------------------------------------------------------------------------------------------
# the linear operator K and its adjoint
# --------------------------------------------------------------------------------------------------


class Operator(nn.Module):
    """A learnable linear map ``K`` together with its adjoint ``Kᵀ``.

    ``kind="conv"``: ``K Y = conv2d(Y, W)`` with ``W`` of shape ``(out, in, k, k)``, stride 1 and zero padding
    ``k // 2``; then ``Kᵀ Z = conv_transpose2d(Z, W)`` with the same padding is its exact adjoint,
    ``<K Y, Z> = <Y, Kᵀ Z>`` (the pairing used by {cite}`haber2017stable` and {cite}`ruthotto2020deep`).
    ``kind="linear"``: ``K y = W y`` with ``W`` of shape ``(out, in)``.

    ``stencil`` replaces the learnable weight by a fixed one (a buffer, not a parameter) of shape
    ``(m, 1, k, k)`` applied to each input channel on its own, so ``out = m * in`` (a depthwise convolution):
    the way to put a hand-made finite-difference operator such as :func:`dedl.nn.pde.gradient_stencil` into a layer.
    Parameter count: ``out * in * k²`` (conv), ``out * in`` (linear), 0 with a stencil.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        kind: str = "conv",
        kernel_size: int = 3,
        stencil: Tensor | None = None,
    ):
        super().__init__()
        positive_int("in_features", in_features)
        check_kind(kind)
        check_kernel_size(kernel_size, kind)
        self.kind, self.in_features, self.groups = kind, in_features, 1
        if stencil is not None:
            if kind != "conv":
                raise ValueError("a fixed stencil needs kind='conv'")
            if not isinstance(stencil, Tensor):
                raise TypeError(f"stencil must be a Tensor, got {type(stencil).__name__}")
            if stencil.dim() != 4 or stencil.shape[1] != 1:
                raise ValueError("stencil must be a tensor of shape (m, 1, k, k)")
            kh, kw = stencil.shape[-2:]
            if kh != kw or kh % 2 == 0:
                raise ValueError(f"stencil must be square with an odd size, got {kh}x{kw}")
            if out_features is not None and out_features != stencil.shape[0] * in_features:
                raise ValueError(
                    f"a stencil with {stencil.shape[0]} filters maps {in_features} channels to "
                    f"{stencil.shape[0] * in_features}, not {out_features}"
                )
            self.out_features, self.kernel_size, self.groups = stencil.shape[0] * in_features, kh, in_features
            weight = stencil.detach().to(torch.get_default_dtype()).repeat(in_features, 1, 1, 1)
            self.register_buffer("weight", weight)
            return
        self.out_features = positive_int("out_features", out_features or in_features)
        self.kernel_size = kernel_size if kind == "conv" else 1
        shape = (self.out_features, in_features) + ((kernel_size, kernel_size) if kind == "conv" else ())
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # PyTorch's default for Conv2d and Linear

    def forward(self, y: Tensor) -> Tensor:
        """``K y``."""
        if self.kind == "linear":
            return y @ self.weight.T
        return F.conv2d(y, self.weight, padding=self.kernel_size // 2, groups=self.groups)

    def adjoint(self, z: Tensor) -> Tensor:
        """``Kᵀ z``."""
        if self.kind == "linear":
            return z @ self.weight
        return F.conv_transpose2d(z, self.weight, padding=self.kernel_size // 2, groups=self.groups)

    @torch.no_grad()
    def norm(self, input_shape: Sequence[int] | None = None, iterations: int = 200, seed: int = 0) -> float:
        """The spectral norm ``‖K‖`` by power iteration on ``KᵀK``.

        A convolution's norm depends on the image size: pass ``input_shape = (channels, height, width)``.
        """
        if self.kind == "conv":
            if input_shape is None or len(input_shape) != 3:
                raise ValueError("a convolution's norm needs input_shape = (channels, height, width)")
            shape = (1, *input_shape)
        else:
            shape = (1, self.in_features)
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(shape, generator=g, dtype=self.weight.dtype).to(self.weight.device)
        v = v / v.norm()
        rayleigh = torch.zeros(())
        for _ in range(positive_int("iterations", iterations)):
            w = self.adjoint(self(v))
            rayleigh = (v * w).sum()
            v = w / w.norm().clamp_min(1e-30)
        return float(rayleigh.clamp_min(0).sqrt())

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, kind={self.kind!r}, kernel_size={self.kernel_size}"


def zero_bias(features: int, kind: str) -> nn.Parameter:
    """A learnable bias ``b`` of ``features`` channels, initialised to zero, for ``σ(K Y + b)``.

    Shape ``(1, features, 1, 1)`` for ``kind="conv"`` (one value per channel, broadcast over the image) and
    ``(1, features)`` for ``kind="linear"``: the ``b_j`` of the layers of {cite}`haber2017stable` and
    {cite}`ruthotto2020deep`.
    """
    return nn.Parameter(torch.zeros((1, features, 1, 1) if kind == "conv" else (1, features)))


def _symmetric_term(op: Operator, bias: Tensor | None, activation: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """``Kᵀ σ(K y + b)``: the gradient of ``Σ ψ(K y + b)`` with ``ψ' = σ``, the force term of every net here."""
    u = op(y)
    return op.adjoint(activation(u if bias is None else u + bias))


# --------------------------------------------------------------------------------------------------
# antisymmetric ResNet (Haber & Ruthotto 2017)
# --------------------------------------------------------------------------------------------------


class AntisymmetricLayer(nn.Module):
    """One forward Euler step ``Y + h σ(A Y + b)`` with ``A = W − Wᵀ − γI`` ({cite}`haber2017stable`, Sec. 3.1).

    ``A + Aᵀ = −2γI``, so the Jacobian of the vector field, ``diag(σ') A``, has eigenvalues with real part in
    ``[−γ max σ', 0]``: zero for ``γ = 0`` (a purely oscillating linearisation) and slightly damped for
    ``γ > 0``. Damping alone does not make the forward Euler step stable: on a mode ``λ = −γ + iω`` of ``A``
    (``σ' = 1``) the step multiplies by ``|1 + hλ|``, at most 1 only when ``h (γ² + ω²) ≤ 2γ``, roughly
    ``γ ≥ h ω_max² / 2``. At the defaults and a random ``W`` that fails and the amplification exceeds 1
    (chapter 2.3 measures it). (Haber & Ruthotto write ``½(W − Wᵀ − γI)``; the factor is absorbed into ``W``
    and ``h``.) For convolutions ``Wᵀ`` is the transposed convolution, so ``A`` is antisymmetric as an
    operator on images.
    """

    def __init__(
        self,
        width: int,
        h: float,
        gamma: float = 0.01,
        kind: str = "conv",
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
    ):
        super().__init__()
        self.h, self.gamma = positive_float("h", h), positive_float("gamma", gamma, allow_zero=True)
        self.activation = activation
        self.op = Operator(width, width, kind, kernel_size)
        self.bias = zero_bias(width, kind)

    def antisymmetric(self, y: Tensor) -> Tensor:
        """``(W − Wᵀ − γI) y``."""
        return self.op(y) - self.op.adjoint(y) - self.gamma * y

    def vector_field(self, y: Tensor) -> Tensor:
        """The right-hand side ``f(Y) = σ(A Y + b)`` of the ODE this layer steps."""
        return self.activation(self.antisymmetric(y) + self.bias)

    def forward(self, y: Tensor) -> Tensor:
        return y + self.h * self.vector_field(y)


class LayerStack(nn.Module):
    """A body of one-step layers, ``Y_{j+1} = layer_j(Y_j)`` for ``j = 0, ..., depth − 1``, with the step
    ``h = T / depth``: the frame of :class:`AntisymmetricResNet` and :class:`dedl.nn.pde.ParabolicCNN`, whose
    constructors fill ``self.layers``."""

    def __init__(self, width: int, depth: int, T: float, kind: str):
        super().__init__()
        self.width, self.depth = positive_int("width", width), positive_int("depth", depth)
        self.T, self.kind = positive_float("T", T), check_kind(kind)

    @property
    def h(self) -> float:
        """The step size ``T / depth``."""
        return self.T / self.depth

    @property
    def nfe(self) -> int:
        """Evaluations of a layer's function per forward pass: one per layer, ``depth``."""
        return self.depth

    def forward(self, y: Tensor) -> Tensor:
        check_image_or_vector(y, self.kind, self.width)
        for layer in self.layers:
            y = layer(y)
        return y

    def trajectory(self, y: Tensor) -> Tensor:
        """The states ``Y_0, ..., Y_depth`` stacked, shape ``(depth + 1, *y.shape)``, for plots."""
        check_image_or_vector(y, self.kind, self.width)
        states = [y]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return torch.stack(states)


class AntisymmetricResNet(LayerStack):
    """Antisymmetric ResNet {cite}`haber2017stable`: ``Y_{j+1} = Y_j + h σ((W_j − W_jᵀ − γI) Y_j + b_j)``.

    ``depth`` forward Euler steps of size ``h = T / depth``. Not reversible (forward Euler is not), but
    stable by design: the linearisation has eigenvalues on or just left of the imaginary axis, so signals
    neither explode nor vanish as depth grows. Body for ``ImageClassifier`` with ``kind="conv"``.

    Parameter count: ``depth * (width² k² + width)`` (``k = 1`` for ``kind="linear"``).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        gamma: float = 0.01,
        kind: str = "conv",
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
    ):
        super().__init__(width, depth, T, kind)
        self.layers = nn.ModuleList(
            AntisymmetricLayer(width, self.h, gamma, kind, kernel_size, activation) for _ in range(depth)
        )


# --------------------------------------------------------------------------------------------------
# reversible blocks and memory-free backpropagation
# --------------------------------------------------------------------------------------------------


class ReversibleBlock(nn.Module):
    """A layer on a pair of states ``(x₁, x₂) -> (y₁, y₂)`` with an exact inverse.

    Subclasses implement ``forward(x1, x2)`` and ``inverse(y1, y2)``; both must be deterministic so that the
    backward pass of :func:`reversible_sequence` can recompute the forward pass. ``nfe`` is the number of
    function evaluations one step takes.
    """

    nfe: int = 1

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class AdditiveCoupling(ReversibleBlock):
    """The RevNet block {cite}`gomez2017reversible`, with a step size:

    ``y₁ = x₁ + h F(x₂),  y₂ = x₂ + h G(y₁)``;  inverse ``x₂ = y₂ − h G(y₁),  x₁ = y₁ − h F(x₂)``.

    Read as an ODE solver ({cite}`chang2018reversible`) this is the symplectic Euler / Störmer–Verlet step for
    ``ẋ₁ = F(x₂), ẋ₂ = G(x₁)``: the second update already uses the new ``y₁``, which is what makes the step
    explicit both forwards and backwards. Gomez et al.'s block is ``h = 1``. ``nfe = 2`` (``F`` and ``G``).
    """

    nfe = 2

    def __init__(self, F: nn.Module, G: nn.Module, h: float = 1.0):
        super().__init__()
        self.F, self.G, self.h = F, G, positive_float("h", h)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        y1 = x1 + self.h * self.F(x2)
        y2 = x2 + self.h * self.G(y1)
        return y1, y2

    def inverse(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        x2 = y2 - self.h * self.G(y1)
        x1 = y1 - self.h * self.F(x2)
        return x1, x2


class TwoLayer(nn.Module):
    """The default RevNet residual function ``F(x) = K₂ σ(K₁ x + b₁) + b₂`` (``K₁: c -> m``, ``K₂: m -> c``).

    Parameter count: ``2 m c k² + m + c``.
    """

    def __init__(self, channels: int, hidden: int, kind: str, kernel_size: int, activation: Callable[[Tensor], Tensor]):
        super().__init__()
        self.inner = Operator(channels, hidden, kind, kernel_size)
        self.outer = Operator(hidden, channels, kind, kernel_size)
        self.b1, self.b2 = zero_bias(hidden, kind), zero_bias(channels, kind)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.activation(self.inner(x) + self.b1)) + self.b2


class SymmetricForce(nn.Module):
    """``x -> sign * Kᵀ σ(K x + b)`` (``K: c -> m``): the residual function of the Hamiltonian network.

    Parameter count: ``m c k² + m``.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        kind: str,
        kernel_size: int,
        activation: Callable[[Tensor], Tensor],
        sign: float,
    ):
        super().__init__()
        self.op, self.bias, self.activation, self.sign = (
            Operator(channels, hidden, kind, kernel_size),
            zero_bias(hidden, kind),
            activation,
            sign,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.sign * _symmetric_term(self.op, self.bias, self.activation, x)


class RevBlock(AdditiveCoupling):
    """RevNet block {cite}`gomez2017reversible` on channel halves: ``y₁ = x₁ + h F(x₂), y₂ = x₂ + h G(y₁)``.

    ``F`` and ``G`` are :class:`TwoLayer` residual functions of the half width ``c`` unless ``residual(c)``
    builds them (e.g. the shared residual function of ``dedl.nn.resnets``).
    """

    def __init__(
        self,
        channels: int,
        h: float = 1.0,
        hidden: int | None = None,
        kind: str = "conv",
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        residual: Callable[[int], nn.Module] | None = None,
    ):
        positive_int("channels", channels)
        check_kind(kind)
        check_kernel_size(kernel_size, kind)
        if residual is None:
            m = positive_int("hidden", hidden or channels)
            f, g = (TwoLayer(channels, m, kind, kernel_size, activation) for _ in range(2))
        else:
            f, g = residual(channels), residual(channels)
        super().__init__(f, g, h)


class HamiltonianBlock(AdditiveCoupling):
    """One Verlet step of the Hamiltonian network {cite}`chang2018reversible` (after {cite}`haber2017stable`):

    ``y_{j+1} = y_j + h K₁ᵀ σ(K₁ z_j + b₁),  z_{j+1} = z_j − h K₂ᵀ σ(K₂ y_{j+1} + b₂)``.

    It is a RevNet coupling with ``F = K₁ᵀσ(K₁ · + b₁)`` and ``G = −K₂ᵀσ(K₂ · + b₂)``: tying the outer weight to
    the transpose of the inner one makes the Jacobian of the field ``[[0, K₁ᵀD₁K₁], [−K₂ᵀD₂K₂, 0]]``, whose
    eigenvalues are purely imaginary for monotone ``σ`` (``D = diag(σ') ≥ 0``).
    """

    def __init__(
        self,
        channels: int,
        h: float,
        hidden: int | None = None,
        kind: str = "conv",
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
    ):
        positive_int("channels", channels)
        check_kind(kind)
        check_kernel_size(kernel_size, kind)
        m = positive_int("hidden", hidden or channels)
        super().__init__(
            SymmetricForce(channels, m, kind, kernel_size, activation, +1.0),
            SymmetricForce(channels, m, kind, kernel_size, activation, -1.0),
            h,
        )


class LeapfrogBlock(ReversibleBlock):
    """One step of the second-order (leapfrog) network {cite}`chang2018reversible`, {cite}`ruthotto2020deep`:

    ``(Y_{j−1}, Y_j) -> (Y_j, Y_{j+1})`` with ``Y_{j+1} = 2Y_j − Y_{j−1} − h² Kᵀ σ(K Y_j + b)``,

    the central-difference discretisation of ``Ÿ = −Kᵀσ(KY + b)``. The inverse runs the same recursion
    backwards: ``Y_{j−1} = 2Y_j − Y_{j+1} − h² Kᵀσ(K Y_j + b)``. ``force(Y) = Kᵀσ(KY + b)`` may be
    replaced by any module (the hyperbolic CNN of :mod:`dedl.nn.pde` passes one with a normalisation).
    """

    def __init__(
        self,
        channels: int,
        h: float,
        hidden: int | None = None,
        kind: str = "conv",
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
        force: nn.Module | None = None,
    ):
        super().__init__()
        self.h = positive_float("h", h)
        if force is None:
            positive_int("channels", channels)
            check_kind(kind)
            check_kernel_size(kernel_size, kind)
            m = positive_int("hidden", hidden or channels)
            force = SymmetricForce(channels, m, kind, kernel_size, activation, +1.0)
        self.force = force

    def forward(self, y_prev: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return y, 2 * y - y_prev - self.h**2 * self.force(y)

    def inverse(self, y: Tensor, y_next: Tensor) -> tuple[Tensor, Tensor]:
        return 2 * y - y_next - self.h**2 * self.force(y), y


@contextmanager
def _frozen_running_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Let batch-norm layers normalise with batch statistics but not update their running averages.

    The backward pass of :func:`reversible_sequence` runs every block a second time; without this the running
    mean and variance would be updated twice per training step.
    """
    norms = [m for block in modules for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _trainable(blocks: Sequence[nn.Module]) -> list[Tensor]:
    """The trainable parameters of ``blocks``, each once, in a fixed order."""
    seen: dict[int, Tensor] = {}
    for block in blocks:
        for p in block.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


class _ReversibleFunction(torch.autograd.Function):
    """Forward without a graph; backward rebuilds each block's input from its output (Gomez et al., Alg. 1)."""

    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor, blocks: Sequence[ReversibleBlock], *params: Tensor):
        ctx.blocks = blocks
        ctx.param_ids = [id(p) for p in _trainable(blocks)]  # the order of ``params``
        with torch.no_grad():
            for block in blocks:
                x1, x2 = block(x1, x2)
        ctx.save_for_backward(x1, x2)  # the outputs only: nothing per layer
        return x1, x2

    @staticmethod
    def backward(ctx, g1: Tensor, g2: Tensor):
        y1, y2 = ctx.saved_tensors
        blocks = ctx.blocks
        grads: dict[int, Tensor] = {}
        with _frozen_running_stats(blocks):
            for block in reversed(blocks):
                with torch.no_grad():
                    x1, x2 = block.inverse(y1, y2)
                params = [p for p in block.parameters() if p.requires_grad]
                with torch.enable_grad():
                    a1, a2 = x1.detach().requires_grad_(True), x2.detach().requires_grad_(True)
                    o1, o2 = block(a1, a2)
                    out = torch.autograd.grad((o1, o2), (a1, a2, *params), (g1, g2), allow_unused=True)
                g1 = out[0] if out[0] is not None else torch.zeros_like(x1)
                g2 = out[1] if out[1] is not None else torch.zeros_like(x2)
                for p, g in zip(params, out[2:]):
                    if g is not None:
                        grads[id(p)] = grads[id(p)] + g if id(p) in grads else g
                y1, y2 = x1, x2
        return (g1, g2, None, *(grads.get(i) for i in ctx.param_ids))


def reversible_sequence(
    blocks: Sequence[ReversibleBlock], x1: Tensor, x2: Tensor, memory_efficient: bool = True
) -> tuple[Tensor, Tensor]:
    """Run ``blocks`` on the pair ``(x1, x2)``.

    With ``memory_efficient=True`` (and gradients enabled) no intermediate activation is stored: the
    backward pass reconstructs the input of each block from its output with ``block.inverse`` and
    recomputes that one block's graph to backpropagate through it ({cite}`gomez2017reversible`, Alg. 1).
    Memory for the backward pass is then that of one block, whatever the depth, at the price of one extra
    forward pass; the gradients equal ordinary backpropagation up to the round-off of the reconstruction.
    Double backward is not supported in this mode. With ``memory_efficient=False`` this is a plain loop.
    """
    blocks = list(blocks)
    if not blocks:
        raise ValueError("reversible_sequence needs at least one block")
    if not memory_efficient or not torch.is_grad_enabled():
        for block in blocks:
            x1, x2 = block(x1, x2)
        return x1, x2
    # the parameters are passed as inputs so that autograd asks the Function for their gradients
    return _ReversibleFunction.apply(x1, x2, blocks, *_trainable(blocks))


class ReversibleBody(nn.Module):
    """A stack of :class:`ReversibleBlock` s used as a network body: ``x -> merge(blocks(split(x)))``.

    Subclasses choose ``split`` and ``merge``. ``forward_pair`` / ``inverse_pair`` expose the pair of states.
    """

    blocks: nn.ModuleList

    def __init__(self, width: int, depth: int, T: float, kind: str, memory_efficient: bool):
        super().__init__()
        positive_int("width", width)
        positive_int("depth", depth)
        self.width, self.depth, self.T, self.kind = width, depth, positive_float("T", T), check_kind(kind)
        self.memory_efficient = bool(memory_efficient)

    @property
    def h(self) -> float:
        return self.T / self.depth

    @property
    def nfe(self) -> int:
        """Function evaluations per forward pass: the blocks' evaluations summed (``2 depth`` for the coupling
        blocks of :class:`RevNet` and :class:`HamiltonianNet`, ``depth`` for the leapfrog networks)."""
        return sum(block.nfe for block in self.blocks)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = x.shape[1] // 2
        return x[:, :c], x[:, c:]

    def merge(self, y1: Tensor, y2: Tensor) -> Tensor:
        return torch.cat([y1, y2], dim=1)

    def forward_pair(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Run the blocks on the pair of states (memory-free when ``memory_efficient``)."""
        return reversible_sequence(self.blocks, x1, x2, self.memory_efficient)

    def inverse_pair(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        """Run the blocks backwards: the exact inverse of :meth:`forward_pair` up to round-off."""
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2)
        return y1, y2

    def forward(self, x: Tensor) -> Tensor:
        check_image_or_vector(x, self.kind, self.width)
        return self.merge(*self.forward_pair(*self.split(x)))

    def trajectory(self, x: Tensor) -> Tensor:
        """The states after 0, 1, ..., ``depth`` blocks (each merged as the output is), stacked: shape
        ``(depth + 1, *x.shape)``, for plots."""
        check_image_or_vector(x, self.kind, self.width)
        pair = self.split(x)
        states = [self.merge(*pair)]
        for block in self.blocks:
            pair = block(*pair)
            states.append(self.merge(*pair))
        return torch.stack(states)

    def inverse(self, y: Tensor) -> Tensor:
        """The input ``x`` with ``self(x) == y``."""
        check_image_or_vector(y, self.kind, self.width)
        return self.merge(*self.inverse_pair(*self.split(y)))


class RevNet(ReversibleBody):
    """Reversible residual network {cite}`gomez2017reversible`: channel halves ``(x₁, x₂)`` and ``depth`` blocks

    ``y₁ = x₁ + h F_j(x₂),  y₂ = x₂ + h G_j(y₁)``,  ``h = T / depth``

    (``T = depth`` gives Gomez et al.'s unit step; the default ``T = 1`` treats the network as an ODE on
    ``[0, 1]`` like the other bodies, which only rescales the initial residuals). Exactly invertible
    (:meth:`ReversibleBody.inverse`), and with ``memory_efficient=True`` (the default) trained without storing
    activations.
    {cite}`chang2018reversible` read the block as a Verlet step of ``ẋ₁ = F(x₂), ẋ₂ = G(x₁)``;
    :class:`HamiltonianNet` is the special case ``F = K₁ᵀσ(K₁·), G = −K₂ᵀσ(K₂·)``.

    ``residual(c)`` optionally builds each ``F_j`` and ``G_j`` on ``c = width // 2`` channels (it must be
    deterministic: no dropout). ``width`` must be even.
    Parameter count (default :class:`TwoLayer` residuals, ``m = hidden`` or ``c``): ``depth * 2 * (2 m c k² + m + c)``.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        residual: Callable[[int], nn.Module] | None = None,
        memory_efficient: bool = True,
    ):
        super().__init__(_check_even(width), depth, T, kind, memory_efficient)
        self.blocks = nn.ModuleList(
            RevBlock(width // 2, self.h, hidden, kind, kernel_size, activation, residual) for _ in range(depth)
        )


class HamiltonianNet(ReversibleBody):
    """Hamiltonian reversible network {cite}`chang2018reversible` (after {cite}`haber2017stable`, Sec. 3.2).

    The channels are split into two halves ``(y, z)`` that are updated in turn (Verlet):

    ``y_{j+1} = y_j + h K_{j1}ᵀ σ(K_{j1} z_j + b_{j1}),  z_{j+1} = z_j − h K_{j2}ᵀ σ(K_{j2} y_{j+1} + b_{j2})``.

    It discretises ``ẏ = K₁ᵀσ(K₁z + b₁), ż = −K₂ᵀσ(K₂y + b₂)``, whose linearisation has purely imaginary
    eigenvalues: forward propagation neither amplifies nor damps perturbations, and the recursion runs
    backwards exactly (time-reversible). Stable for ``h`` small enough that ``h² ‖K₁‖²‖K₂‖² max σ'² ≲ 4``.
    ``width`` must be even; ``hidden`` (default ``width // 2``) is the number of output channels of each ``K``.

    Parameter count: ``depth * 2 * (m c k² + m)`` with ``c = width // 2``, ``m = hidden or c``.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
        memory_efficient: bool = False,
    ):
        super().__init__(_check_even(width), depth, T, kind, memory_efficient)
        self.blocks = nn.ModuleList(
            HamiltonianBlock(width // 2, self.h, hidden, kind, kernel_size, activation) for _ in range(depth)
        )


class SecondOrderBody(ReversibleBody):
    """A body whose pair of states is ``(Y_{j−1}, Y_j)``: it starts at rest (``Y_{−1} = Y_0``) and returns ``Y_N``."""

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x  # Y_{-1} = Y_0: zero initial velocity

    def merge(self, y_prev: Tensor, y: Tensor) -> Tensor:
        return y

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError(
            "a second-order network needs its last two states to run backwards: use "
            "inverse_pair(Y_{N-1}, Y_N) with the states from forward_pair"
        )


class LeapfrogNet(SecondOrderBody):
    """Second-order (leapfrog) network {cite}`chang2018reversible`:

    ``Y_{j+1} = 2Y_j − Y_{j−1} − h² K_jᵀ σ(K_j Y_j + b_j)``,  ``h = T / depth``,  ``Y_{−1} = Y_0``

    (start at rest), the central-difference discretisation of ``Ÿ = −Kᵀσ(KY + b)``. The output is ``Y_depth``.
    Time-reversible: from ``(Y_{N−1}, Y_N)`` the same recursion run backwards
    (:meth:`ReversibleBody.inverse_pair`) returns ``(Y_{−1}, Y_0)``. Stable (no growth) for
    ``h ‖K‖ (max σ')^{1/2} < 2``. ``hidden`` (default ``width``) is the number of output channels of each ``K``.

    Parameter count: ``depth * (m width k² + m)`` with ``m = hidden or width``.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        T: float = 1.0,
        kind: str = "conv",
        hidden: int | None = None,
        kernel_size: int = 3,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
        memory_efficient: bool = False,
    ):
        super().__init__(width, depth, T, kind, memory_efficient)
        self.blocks = nn.ModuleList(
            LeapfrogBlock(width, self.h, hidden, kind, kernel_size, activation) for _ in range(depth)
        )


# --------------------------------------------------------------------------------------------------
# AntisymmetricRNN (Chang, Chen, Haber & Chi 2019)
# --------------------------------------------------------------------------------------------------


class AntisymmetricRNN(nn.Module):
    """AntisymmetricRNN {cite}`chang2019antisymmetricrnn`, a forward Euler step per time step:

    ``h_t = h_{t−1} + ε σ((W − Wᵀ − γI) h_{t−1} + V x_t + b)``

    and with ``gated=True`` (their eq. for the gated variant)

    ``z_t = sigmoid((W − Wᵀ − γI) h_{t−1} + V_z x_t + b_z)``,
    ``h_t = h_{t−1} + ε z_t ⊙ σ((W − Wᵀ − γI) h_{t−1} + V x_t + b)``.

    The antisymmetric recurrent matrix keeps the Jacobian's eigenvalues near the imaginary axis, so the
    gradient ``∂L/∂h_t`` neither vanishes nor explodes over long sequences. The diffusion ``γ > 0`` damps the
    modes ``λ = −γ + iω`` of the recurrent matrix, but the forward Euler step ``|1 + ελ| ≤ 1`` needs
    ``ε (γ² + ω²) ≤ 2γ``, roughly ``γ ≥ ε ω_max² / 2``: at the defaults and a random ``W`` the step amplifies
    slightly (see :class:`AntisymmetricLayer`). Input ``(batch, time, input_size)``; returns ``(outputs, h_T)`` with
    ``outputs`` of shape ``(batch, time, hidden_size)``, like ``nn.RNN(batch_first=True)``.

    Parameter count: ``hidden_size² + input_size * hidden_size + hidden_size``, and
    ``input_size * hidden_size + hidden_size`` more when gated.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        eps: float = 0.1,
        gamma: float = 0.01,
        gated: bool = False,
        activation: Callable[[Tensor], Tensor] = torch.tanh,
    ):
        super().__init__()
        positive_int("input_size", input_size)
        positive_int("hidden_size", hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.eps, self.gamma = positive_float("eps", eps), positive_float("gamma", gamma, allow_zero=True)
        self.gated, self.activation = gated, activation
        self.W = nn.Parameter(torch.randn(hidden_size, hidden_size) / math.sqrt(hidden_size))
        n_in = 2 * hidden_size if gated else hidden_size
        self.V = nn.Linear(input_size, n_in)  # V x + b (and V_z x + b_z when gated)

    def recurrent_matrix(self) -> Tensor:
        """``W − Wᵀ − γI``."""
        eye = torch.eye(self.hidden_size, dtype=self.W.dtype, device=self.W.device)
        return self.W - self.W.T - self.gamma * eye

    def cell(self, x_t: Tensor, h: Tensor) -> Tensor:
        """One step ``h_{t−1} -> h_t`` for inputs ``x_t`` of shape ``(batch, input_size)``."""
        a = h @ self.recurrent_matrix().T
        u = self.V(x_t)
        if not self.gated:
            return h + self.eps * self.activation(a + u)
        u_h, u_z = u.chunk(2, dim=-1)
        return h + self.eps * torch.sigmoid(a + u_z) * self.activation(a + u_h)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.input_size:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected input of shape (batch, time, {self.input_size}), got {shape}")
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0
        if h.shape != (x.shape[0], self.hidden_size):
            raise ValueError(f"h0 must have shape {(x.shape[0], self.hidden_size)}, got {tuple(h.shape)}")
        outputs = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


@torch.no_grad()
def amplification(body: Callable[[Tensor], Tensor], x: Tensor, size: float = 1e-6, seed: int = 0) -> float:
    """Median over the batch of ``‖Φ(x + δ) − Φ(x)‖ / ‖δ‖`` for random ``δ`` of norm ``size``.

    The forward stability of {cite}`haber2017stable` measured directly: how much a network ``Φ`` (``body``)
    amplifies a small perturbation of its input. About 1 for a stable, non-dissipative network; growing
    exponentially with depth for an unstable one. ``x`` has a batch dimension first; ``δ`` is drawn per
    example from a generator seeded by ``seed``.
    """
    positive_float("size", size)
    g = torch.Generator(device=x.device).manual_seed(seed)
    delta = torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)
    delta = size * delta / delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    ratio = (body(x + delta) - body(x)).flatten(1).norm(dim=1) / size
    return ratio.median().item()


def saved_activation_bytes(module: nn.Module, *inputs: Tensor) -> int:
    """Bytes that autograd keeps alive between the forward and the backward pass of ``module(*inputs)``.

    Every tensor an operation saves for its backward passes through a
    :func:`torch.autograd.graph.saved_tensors_hooks` pack hook; this sums the sizes of the distinct storages
    seen there, leaving out the module's parameters (which exist with or without backpropagation). That is
    the memory that grows with depth in ordinary backpropagation and stays flat for
    :func:`reversible_sequence` in its memory-efficient mode. (CPU memory tools do not see this directly:
    ``tracemalloc`` tracks only Python's allocator, and the process size includes PyTorch's allocator cache.)
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    return sum(storages.values())
