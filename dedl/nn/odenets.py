"""Continuous-depth models: the Neural ODE block and the variants Part III builds on it.

A residual block ``h + f(h)`` is one forward-Euler step of ``dh/dt = f(t, h)``; a Neural ODE keeps the
differential equation and lets an ODE solver choose the steps {cite}`chen2018neural`:

* :class:`MLPVectorField`, :class:`ConvVectorField` -- the learned right-hand side ``f_theta(t, h)``;
* :class:`NeuralODE` -- ``h(T) = h(t0) + int_{t0}^{T} f_theta(t, h(t)) dt``, trained by backpropagating through
  the solver or by the adjoint method, with its number of function evaluations (NFE) counted;
* :func:`odenet` -- Chen et al.'s ODE-Net image classifier (stem, one ODE block, head);
* :class:`AugmentedNeuralODE` -- the flow on ``R^{d+p}`` started from ``[x, 0]`` {cite}`dupont2019augmented`;
* :class:`SecondOrderNeuralODE` -- ``x'' = f_theta(t, x, x')`` written as a first-order system {cite}`norcliffe2020second`;
* :class:`HamiltonianVectorField` -- the vector field ``(dH/dp, -dH/dq)`` of a learned energy ``H``.

The time-series models (neural CDE, ODE-RNN, latent ODE) live at the end of this module.

Every model exposes ``nfe``, the vector-field evaluations of its latest forward pass (and :class:`NeuralODE`
:attr:`~NeuralODE.nfe_backward`, those of the adjoint solve); the solver defaults are stated once, in the
constants :data:`METHOD`, :data:`RTOL`, :data:`ATOL`, :data:`ODENET_ATOL`, :data:`FIXED_METHOD` and
:data:`ENCODER_METHOD`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from dedl.cde import cdeint
from dedl.interpolation import LinearInterpolation, NaturalCubicSpline
from dedl.nn.checks import check_norm, positive_float, positive_int
from dedl.nn.classifier import ImageClassifier
from dedl.regularizers import NOISES, REGULARIZERS, regularized_odeint, steer_end_time
from dedl.solvers import odeint, odeint_adjoint
from dedl.solvers.timegrid import check_time_grid
from dedl.utils import NFECounter

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


#: The values of ``norm`` that :class:`ConvVectorField` accepts: group normalisation, or none.
NORMS = ("group", None)
#: The solver of the continuous-depth models (:class:`NeuralODE` and its subclasses, :func:`odenet`): adaptive
#: Dormand–Prince 5(4), as in {cite}`chen2018neural`.
METHOD = "dopri5"
#: The relative tolerance of every adaptive solve in this module.
RTOL = 1e-3
#: The absolute tolerance of every adaptive solve in this module, except :func:`odenet`'s.
ATOL = 1e-4
#: The absolute tolerance of :func:`odenet`, looser: a classifier needs the logits, not an accurate path.
ODENET_ATOL = 1e-3
#: The fixed-step solver of the controlled and latent models (:class:`NeuralCDE`, :class:`LatentODE`'s decoder).
FIXED_METHOD = "rk4"
#: The solver of one gap of an ODE-RNN (:class:`ODERNN`, :class:`LatentODE`'s encoder): one Euler step.
ENCODER_METHOD = "euler"


def _time_grid(t: Sequence[float] | Tensor) -> Tensor:
    """A strictly monotone 1-D tensor of at least two times (float64, moved and cast at each call)."""
    return check_time_grid(t, min_points=2).to(torch.float64).clone()


# ----------------------------------------------------------------------------------------------------
# Vector fields f_theta(t, h)
# ----------------------------------------------------------------------------------------------------


class MLPVectorField(nn.Module):
    """A multilayer perceptron as the right-hand side of ``dh/dt = f_theta(t, h)`` for states ``h`` of shape ``(B, dim)``.

    With ``time_dependent=True`` the time is appended to the input, ``f_theta(t, h) = MLP([h, t])``, so the
    field may change with depth; otherwise ``f_theta(h) = MLP(h)`` is autonomous (Chen et al. 2018,
    eq. 1 with ``theta`` shared over depth {cite}`chen2018neural`). ``out_dim`` (default ``dim``) lets the
    same class parametrise an acceleration ``f(x, v) -> R^d`` for :class:`SecondOrderNeuralODE`.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "tanh",
        time_dependent: bool = False,
        out_dim: int | None = None,
    ):
        super().__init__()
        positive_int("dim", dim)
        positive_int("hidden", hidden)
        positive_int("layers", layers)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.dim = dim
        self.out_dim = dim if out_dim is None else out_dim
        positive_int("out_dim", self.out_dim)
        self.time_dependent = time_dependent
        widths = [dim + int(time_dependent)] + [hidden] * layers
        modules: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            modules += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
        modules.append(nn.Linear(widths[-1], self.out_dim))
        self.net = nn.Sequential(*modules)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.dim() != 2 or h.shape[1] != self.dim:
            raise ValueError(f"expected a state of shape (batch, {self.dim}), got {tuple(h.shape)}")
        if self.time_dependent:
            h = torch.cat([h, torch.as_tensor(t, dtype=h.dtype, device=h.device).expand(h.shape[0], 1)], dim=1)
        return self.net(h)


def _group_norm(channels: int) -> nn.GroupNorm:
    """Group normalisation with at most 32 groups of at least 4 channels each (where the width allows).

    Chen et al. use ``min(32, channels)`` groups; at small widths that is one channel per group, and the
    last normalisation of the field would then zero each channel's spatial mean, so that a head with global
    average pooling could not see what the ODE block does.
    """
    return nn.GroupNorm(math.gcd(channels, min(32, max(1, channels // 4))), channels)


class _ConcatTimeConv2d(nn.Module):
    """A 3x3 convolution that sees the time as one extra constant input channel."""

    def __init__(self, channels_in: int, channels_out: int, time_dependent: bool):
        super().__init__()
        self.time_dependent = time_dependent
        self.conv = nn.Conv2d(channels_in + int(time_dependent), channels_out, 3, padding=1)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if self.time_dependent:
            b, _, height, width = h.shape
            tt = torch.as_tensor(t, dtype=h.dtype, device=h.device).expand(b, 1, height, width)
            h = torch.cat([h, tt], dim=1)
        return self.conv(h)


class ConvVectorField(nn.Module):
    """The convolutional right-hand side of Chen et al.'s ODE-Net {cite}`chen2018neural` (Sec. 3).

    ``f_theta(t, h) = GN(conv_t(ReLU(GN(conv_t(ReLU(GN(h)))))))`` for feature maps ``h`` of shape
    ``(B, channels, H, W)``, where ``GN`` is group normalisation and ``conv_t`` a 3x3 convolution that reads
    the time as an extra channel when ``time_dependent`` (the default, as in the paper). It is the residual
    branch of a pre-activation ResNet block; the ODE block shares it across all depths ``t``.

    Group (not batch) normalisation keeps ``f_theta`` a function of each sample alone, as an ODE's right-hand
    side must be (batch statistics would change with every solver stage). ``norm=None`` drops the three
    normalisations: ``conv_t(ReLU(conv_t(ReLU(h))))``. ``norm`` is one of :data:`NORMS`.
    """

    def __init__(
        self, channels: int, hidden: int | None = None, time_dependent: bool = True, norm: str | None = "group"
    ):
        super().__init__()
        positive_int("channels", channels)
        hidden = channels if hidden is None else hidden
        positive_int("hidden", hidden)
        check_norm(norm, NORMS)
        self.channels = channels
        self.norm = norm

        def normalisation(c: int) -> nn.Module:
            return _group_norm(c) if norm == "group" else nn.Identity()

        self.norm1 = normalisation(channels)
        self.conv1 = _ConcatTimeConv2d(channels, hidden, time_dependent)
        self.norm2 = normalisation(hidden)
        self.conv2 = _ConcatTimeConv2d(hidden, channels, time_dependent)
        self.norm3 = normalisation(channels)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.dim() != 4 or h.shape[1] != self.channels:
            raise ValueError(f"expected feature maps of shape (batch, {self.channels}, H, W), got {tuple(h.shape)}")
        h = self.conv1(t, torch.relu(self.norm1(h)))
        h = self.conv2(t, torch.relu(self.norm2(h)))
        return self.norm3(h)


class HamiltonianVectorField(nn.Module):
    """Hamilton's equations ``q' = dH/dp, p' = -dH/dq`` for a learned energy ``H(q, p)`` {cite}`greydanus2019hamiltonian`.

    The state is ``z = [q, p]`` along dimension 1 (``(B, 2d)``); ``hamiltonian`` maps ``z`` to one energy per
    sample (shape ``(B,)`` or ``(B, 1)``; summed over the batch before differentiation). The flow of this
    field conserves ``H`` and volume (it is symplectic), which suits conservative physics and gives a
    reversible, norm-preserving block (the Hamiltonian networks of Part II discretise the same equations).

    Relation to :class:`SecondOrderNeuralODE`: with ``H = |p|^2 / 2 + V(q)`` Hamilton's equations read
    ``q' = p, p' = -grad V(q)``, that is ``q'' = -grad V(q)``: a second-order Neural ODE whose
    acceleration is a gradient and does not depend on the velocity. A general second-order model
    ``x'' = f(t, x, x')`` may also dissipate (damping), which a Hamiltonian field cannot.
    """

    def __init__(self, hamiltonian: nn.Module | Callable[[Tensor], Tensor]):
        super().__init__()
        self.hamiltonian = hamiltonian

    def energy(self, z: Tensor) -> Tensor:
        """``H(z)`` per sample, shape ``(B,)``."""
        energy = self.hamiltonian(z)
        if energy.dim() == 2 and energy.shape[1] == 1:
            energy = energy[:, 0]
        if energy.shape != z.shape[:1]:
            raise ValueError(f"the Hamiltonian must return one value per sample, got shape {tuple(energy.shape)}")
        return energy

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        if z.dim() < 2 or z.shape[1] % 2 != 0:
            raise ValueError(f"expected a state [q, p] of shape (batch, 2d, ...), got {tuple(z.shape)}")
        build_graph = torch.is_grad_enabled()  # False when evaluated under torch.no_grad()
        with torch.enable_grad():
            z_in = z if z.requires_grad else z.detach().requires_grad_(True)
            energy = self.energy(z_in).sum()
            (grad,) = torch.autograd.grad(energy, z_in, create_graph=build_graph)
        dh_dq, dh_dp = grad.chunk(2, dim=1)
        return torch.cat([dh_dp, -dh_dq], dim=1)


# ----------------------------------------------------------------------------------------------------
# The Neural ODE block
# ----------------------------------------------------------------------------------------------------


class NeuralODE(nn.Module):
    """The ODE block ``h(t1) = h(t0) + int_{t0}^{t1} f_theta(t, h(t)) dt`` {cite}`chen2018neural` (eq. 1).

    ``func`` is the vector field ``f(t, h)`` (an ``nn.Module``, so its parameters train); ``t`` the
    integration times: ``(t0, t1)`` for a block, or a longer grid when the trajectory is wanted at several
    times. ``method``, ``rtol``, ``atol`` and ``options`` go to :func:`dedl.solvers.odeint` (``options=
    {"step_size": h}`` for the fixed-step methods). Gradients flow by backpropagation through the solver's
    operations (``adjoint=False``: memory grows with the number of steps) or by solving the adjoint ODE
    ``a' = -a^T df/dh`` backward in time (``adjoint=True``: Chen et al. 2018, eq. 4 and Algorithm 1;
    memory constant in the number of steps, one extra backward solve).

    ``forward(h0)`` returns ``h(t_end)``; :meth:`trajectory` returns ``h`` at every time of the grid, shape
    ``(len(t), *h0.shape)``. The vector field is wrapped in :class:`~dedl.utils.NFECounter`: after a forward
    pass :attr:`nfe` holds the evaluations it took, and after ``backward()`` :attr:`nfe_backward` the
    evaluations the backward pass took (zero without the adjoint: autograd replays stored operations).

    Regularization (Part IV), in training mode only, so that evaluation solves the plain ODE:

    * ``regularizers``: names or callables for :func:`dedl.regularizers.regularized_odeint` (e.g.
      ``("kinetic", "jacobian")``, RNODE {cite}`finlay2020train`; ``"taylor2"``, TayNODE
      {cite}`kelly2020learning`). After a training forward pass :attr:`penalties` maps each name to its
      integral along the solution, shape ``(batch,)``: add ``λ * penalty.mean()`` to the loss. The field
      evaluations the penalties make (a Jacobian-vector product is one more) count in :attr:`nfe`.
      ``noise`` is the Hutchinson probe's distribution.
    * ``steer``: STEER's half-width ``b`` {cite}`ghosh2020steer`: each training forward pass integrates to an end
      time drawn from ``[t1 - b, t1 + b]`` (:func:`dedl.regularizers.steer_end_time`); needs ``t = (t0, t1)``.
    """

    def __init__(
        self,
        func: nn.Module,
        t: Sequence[float] | Tensor = (0.0, 1.0),
        method: str = METHOD,
        rtol: float = RTOL,
        atol: float = ATOL,
        options: dict | None = None,
        adjoint: bool = False,
        regularizers: str | Sequence[str | Callable] | None = None,
        noise: str = "gaussian",
        steer: float = 0.0,
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError(f"func must be an nn.Module (its parameters are trained), got {type(func).__name__}")
        self.func = NFECounter(func)
        self.register_buffer("t", _time_grid(t), persistent=False)
        self.method = method
        self.rtol = positive_float("rtol", rtol)
        self.atol = positive_float("atol", atol)
        self.options = options
        self.adjoint = adjoint
        self._nfe = 0
        if regularizers is not None:
            names = (regularizers,) if isinstance(regularizers, str) or callable(regularizers) else regularizers
            for name in names:
                if not (callable(name) or name in REGULARIZERS):
                    raise ValueError(f"unknown regularizer {name!r}: use one of {REGULARIZERS} or a callable")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        self.regularizers = regularizers
        self.noise = noise
        self.steer = float(steer)
        if self.steer:
            t = self.t.tolist()
            if len(t) != 2:
                raise ValueError(f"steer needs t = (t0, t1), got {len(t)} times")
            steer_end_time(t[1], self.steer, t[0])  # checks 0 <= steer < t1 - t0
        self.penalties: dict[str, Tensor] = {}

    @property
    def nfe(self) -> int:
        """Function evaluations of the latest forward solve."""
        return self._nfe

    @property
    def nfe_backward(self) -> int:
        """Function evaluations since the latest forward solve ended (the adjoint solve of ``backward()``)."""
        return self.func.nfe - self._nfe

    def _solve(self, h0: Tensor, t: Tensor) -> Tensor:
        if not isinstance(h0, Tensor):
            raise TypeError(f"the initial state must be a Tensor, got {type(h0).__name__}")
        if not h0.is_floating_point():
            raise TypeError(f"the initial state must be floating point, got {h0.dtype}")
        if h0.dim() < 1 or h0.numel() == 0:
            raise ValueError(f"the initial state must be a non-empty tensor with a batch dimension, got {tuple(h0.shape)}")
        t = t.to(device=h0.device, dtype=h0.dtype)
        self.func.reset()
        kwargs = dict(method=self.method, rtol=self.rtol, atol=self.atol, options=self.options)
        self.penalties = {}
        if self.training and self.regularizers is not None:
            ys, self.penalties = regularized_odeint(
                self.func, h0, t, self.regularizers, noise=self.noise, adjoint=self.adjoint, **kwargs
            )
        elif self.adjoint:
            ys = odeint_adjoint(self.func, h0, t, adjoint_params=tuple(self.func.parameters()), **kwargs)
        else:
            ys = odeint(self.func, h0, t, **kwargs)
        self._nfe = self.func.nfe
        if not torch.isfinite(ys[-1]).all():
            raise FloatingPointError("the ODE solution became non-finite; lower the step size or the tolerances")
        return ys

    def _end(self) -> Tensor:
        """The block's times, with STEER's random end time in training."""
        if not (self.training and self.steer):
            return self.t
        t0, t1 = self.t.tolist()
        return torch.tensor([t0, steer_end_time(t1, self.steer, t0)], dtype=self.t.dtype, device=self.t.device)

    def forward(self, h0: Tensor) -> Tensor:
        return self._solve(h0, self._end())[-1]

    def trajectory(self, h0: Tensor, t: Sequence[float] | Tensor | None = None) -> Tensor:
        """The solution at every time of ``t`` (default: the block's grid), shape ``(len(t), *h0.shape)``."""
        return self._solve(h0, self.t if t is None else _time_grid(t))

    def extra_repr(self) -> str:
        t = self.t.tolist()
        span = f"t=({t[0]:g}, {t[-1]:g})" if len(t) == 2 else f"t=<{len(t)} times in [{t[0]:g}, {t[-1]:g}]>"
        extra = f", regularizers={self.regularizers!r}" if self.regularizers is not None else ""
        extra += f", steer={self.steer:g}" if self.steer else ""
        return (f"{span}, method={self.method!r}, rtol={self.rtol:g}, atol={self.atol:g}, "
                f"adjoint={self.adjoint}{extra}")


def odenet(
    in_channels: int,
    width: int,
    num_classes: int,
    t: Sequence[float] | Tensor = (0.0, 1.0),
    method: str = METHOD,
    rtol: float = RTOL,
    atol: float = ODENET_ATOL,
    options: dict | None = None,
    adjoint: bool = False,
    time_dependent: bool = True,
    norm: str | None = "group",
    regularizers: str | Sequence[str | Callable] | None = None,
    steer: float = 0.0,
) -> ImageClassifier:
    """Chen et al.'s ODE-Net {cite}`chen2018neural` (Sec. 7.1) in the book's shared classifier frame.

    ``ImageClassifier(body=NeuralODE(ConvVectorField(width)), ...)``: a convolutional stem to ``width``
    channels, one ODE block whose convolutional vector field is shared across depth, then global average
    pooling and a linear head. The residual stack of a ResNet is replaced by the solver; ``model.body`` is
    the :class:`NeuralODE`, so ``model.body.nfe`` reports the cost of a prediction and
    ``model.body.rtol`` may be changed at test time. ``norm`` is passed to :class:`ConvVectorField`;
    ``regularizers`` and ``steer`` to :class:`NeuralODE` (the penalties are then ``model.body.penalties``).
    """
    positive_int("width", width)
    body = NeuralODE(
        ConvVectorField(width, time_dependent=time_dependent, norm=norm),
        t=t,
        method=method,
        rtol=rtol,
        atol=atol,
        options=options,
        adjoint=adjoint,
        regularizers=regularizers,
        steer=steer,
    )
    return ImageClassifier(body, in_channels=in_channels, width=width, num_classes=num_classes)


# ----------------------------------------------------------------------------------------------------
# Augmented and second-order Neural ODEs
# ----------------------------------------------------------------------------------------------------


class AugmentedNeuralODE(NeuralODE):
    """Augmented Neural ODE {cite}`dupont2019augmented` (eq. 6): solve in ``R^{d+p}`` from ``[x, 0]``.

    ``d/dt [h(t); a(t)] = f_theta(t, [h(t); a(t)])`` with ``[h(0); a(0)] = [x; 0]``. A Neural ODE's flow is a
    homeomorphism of ``R^d``: trajectories cannot cross, so maps like ``g(-1) = 1, g(1) = -1`` are out of
    reach. The ``augment_dim = p`` extra dimensions, zero at the start, give the trajectories room to pass
    each other. The zeros are appended along dimension 1 (features for ``(B, d)`` states, channels for
    ``(B, C, H, W)`` feature maps), so ``func`` must act on ``d + p`` features (or channels).

    As in the paper, a classifier reads the whole augmented state ``h(T)`` through a linear layer:
    ``forward`` returns all ``d + p`` dimensions. With ``return_augmented=False`` the extra dimensions are
    dropped and the output has the input's shape. ``regularizers``, ``noise`` and ``steer`` are those of
    :class:`NeuralODE`.
    """

    def __init__(
        self,
        func: nn.Module,
        augment_dim: int,
        t: Sequence[float] | Tensor = (0.0, 1.0),
        method: str = METHOD,
        rtol: float = RTOL,
        atol: float = ATOL,
        options: dict | None = None,
        adjoint: bool = False,
        return_augmented: bool = True,
        regularizers: str | Sequence[str | Callable] | None = None,
        noise: str = "gaussian",
        steer: float = 0.0,
    ):
        super().__init__(
            func, t=t, method=method, rtol=rtol, atol=atol, options=options, adjoint=adjoint,
            regularizers=regularizers, noise=noise, steer=steer,
        )
        positive_int("augment_dim", augment_dim, allow_zero=True)
        self.augment_dim = augment_dim
        self.return_augmented = return_augmented

    def augment(self, x: Tensor) -> Tensor:
        """``[x, 0]``: ``augment_dim`` zero features (channels) appended along dimension 1."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"expected an input of shape (batch, features, ...), got {tuple(x.shape)}")
        zeros = x.new_zeros((x.shape[0], self.augment_dim, *x.shape[2:]))
        return torch.cat([x, zeros], dim=1)

    def _output(self, h: Tensor, d: int) -> Tensor:
        return h if self.return_augmented else h[:, :d]

    def forward(self, x: Tensor) -> Tensor:
        return self._output(self._solve(self.augment(x), self._end())[-1], x.shape[1])

    def trajectory(self, x: Tensor, t: Sequence[float] | Tensor | None = None) -> Tensor:
        """The (augmented, unless ``return_augmented=False``) state at every time, shape ``(len(t), B, ...)``."""
        ys = self._solve(self.augment(x), self.t if t is None else _time_grid(t))
        return ys if self.return_augmented else ys[:, :, : x.shape[1]]

    def extra_repr(self) -> str:
        return f"augment_dim={self.augment_dim}, " + super().extra_repr()


class _SecondOrderField(nn.Module):
    """``d/dt [x; v] = [v; a(t, [x; v])]`` (the state split in halves along dimension 1)."""

    def __init__(self, acceleration: nn.Module):
        super().__init__()
        self.acceleration = acceleration

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        x, v = z.chunk(2, dim=1)
        a = self.acceleration(t, z)
        if a.shape != x.shape:
            raise ValueError(f"the acceleration must have the position's shape {tuple(x.shape)}, got {tuple(a.shape)}")
        return torch.cat([v, a], dim=1)


class SecondOrderNeuralODE(NeuralODE):
    """Second-order Neural ODE (SONODE) {cite}`norcliffe2020second` (eq. 4): ``x'' = f_theta(t, x, x')``.

    Written as the first-order system on ``z = [x; v]``:

        ``x' = v,   v' = f_theta(t, [x; v]),   x(t0) = input,   v(t0) = g(x(t0))``

    ``acceleration`` is called as ``f(t, z)`` with ``z = [x; v]`` concatenated along dimension 1 and returns
    a tensor of the position's shape (e.g. ``MLPVectorField(2 * d, out_dim=d)``). ``velocity_init`` is ``g``:
    ``None`` starts at rest (``v(t0) = 0``), a module learns the initial velocity from the input, as
    Norcliffe et al. do. The phase space has twice the dimensions, so, like an augmented ODE, a SONODE can
    carry points past each other in position while never crossing in ``(x, v)``; unlike an augmented ODE's, its
    extra dimensions have a meaning (velocity), which is the inductive bias for physical systems.

    ``forward`` returns the position ``x(t1)``; ``return_velocity=True`` returns ``[x; v]`` at ``t1``.
    :meth:`trajectory` returns the same selection at every time of the grid.
    """

    def __init__(
        self,
        acceleration: nn.Module,
        t: Sequence[float] | Tensor = (0.0, 1.0),
        method: str = METHOD,
        rtol: float = RTOL,
        atol: float = ATOL,
        options: dict | None = None,
        adjoint: bool = False,
        velocity_init: nn.Module | Callable[[Tensor], Tensor] | None = None,
        return_velocity: bool = False,
    ):
        if not isinstance(acceleration, nn.Module):
            raise TypeError(f"acceleration must be an nn.Module, got {type(acceleration).__name__}")
        super().__init__(
            _SecondOrderField(acceleration), t=t, method=method, rtol=rtol, atol=atol, options=options, adjoint=adjoint
        )
        self.velocity_init = velocity_init
        self.return_velocity = return_velocity

    def initial_state(self, x: Tensor) -> Tensor:
        """``[x; v(t0)]`` with ``v(t0) = g(x)`` or zero."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"expected a position of shape (batch, features, ...), got {tuple(x.shape)}")
        v0 = torch.zeros_like(x) if self.velocity_init is None else self.velocity_init(x)
        if v0.shape != x.shape:
            raise ValueError(f"velocity_init must return the position's shape {tuple(x.shape)}, got {tuple(v0.shape)}")
        return torch.cat([x, v0], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        z = self._solve(self.initial_state(x), self.t)[-1]
        return z if self.return_velocity else z[:, : x.shape[1]]

    def trajectory(self, x: Tensor, t: Sequence[float] | Tensor | None = None) -> Tensor:
        zs = self._solve(self.initial_state(x), self.t if t is None else _time_grid(t))
        return zs if self.return_velocity else zs[:, :, : x.shape[1]]


# --- Time series: neural CDE, ODE-RNN, latent ODE (below) ---
#
# A batch of series is written on one grid: ``times`` of shape (T,), shared and strictly increasing (the union of
# every series' observation times), ``values`` of shape (B, T, C) and a boolean ``mask`` of the same shape that
# says which entries were observed (default: the entries that are not NaN). Unobserved values are never read, so
# they may hold anything, NaN included. Every model maps (times, values, mask) to a prediction of shape
# (B, T, out) at every time of the grid: at an observed time, a time held out inside the window, or a future time
# after the last observation (where the mask is all False and the prediction is a forecast).

Path = LinearInterpolation | NaturalCubicSpline


def _mlp(n_in: int, width: int, n_out: int, layers: int = 2, final: nn.Module | None = None) -> nn.Sequential:
    """``layers`` hidden layers of ``width`` tanh units (tanh keeps a vector field Lipschitz and bounded)."""
    sizes = [n_in] + [width] * layers
    modules: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        modules += [nn.Linear(a, b), nn.Tanh()]
    modules.append(nn.Linear(sizes[-1], n_out))
    if final is not None:
        modules.append(final)
    return nn.Sequential(*modules)


def _check_series(times: Tensor, values: Tensor, mask: Tensor | None, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Validate ``(times, values, mask)``.

    Returns the times on the values' device and dtype, the values with zeros at unobserved entries, a bool mask.
    """
    if not isinstance(values, Tensor) or not values.is_floating_point():
        got = getattr(values, "dtype", type(values).__name__)
        raise TypeError(f"values must be a floating-point Tensor, got {got}")
    if values.dim() != 3:
        raise ValueError(f"values must have shape (batch, time, channels), got {tuple(values.shape)}")
    if values.shape[-1] != channels:
        raise ValueError(f"the model expects {channels} input channels, got values of shape {tuple(values.shape)}")
    times = torch.as_tensor(times).to(device=values.device, dtype=values.dtype)
    if times.dim() != 1 or times.shape[0] != values.shape[1]:
        raise ValueError(
            f"times must be 1-D with one entry per time point of values ({values.shape[1]}), "
            f"got shape {tuple(times.shape)}"
        )
    check_time_grid(times, "times", min_points=2, increasing=True)
    if mask is None:
        mask = ~torch.isnan(values)
    else:
        if not isinstance(mask, Tensor) or mask.shape != values.shape:
            raise ValueError(
                f"mask must have the shape of values {tuple(values.shape)}, got {tuple(getattr(mask, 'shape', ()))}"
            )
        mask = mask.to(device=values.device, dtype=torch.bool)
        if torch.isnan(values[mask]).any():
            raise ValueError("values are NaN at entries that the mask marks as observed")
    return times, torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)), mask


def _solver_kwargs(method: str, rtol: float, atol: float, options: dict | None) -> dict:
    return dict(method=method, rtol=positive_float("rtol", rtol), atol=positive_float("atol", atol), options=options)


class CDEVectorField(nn.Module):
    """The neural CDE's field ``f_theta: R^H -> R^{H x C}``: an MLP with a final tanh {cite}`kidger2020neural`.

    Autonomous in ``t`` (time enters through the control's time channel). The final tanh bounds the field, which
    Kidger et al. found to help training.
    """

    def __init__(self, hidden_channels: int, control_channels: int, width: int = 64, layers: int = 2):
        super().__init__()
        positive_int("hidden_channels", hidden_channels)
        positive_int("control_channels", control_channels)
        positive_int("width", width)
        positive_int("layers", layers)
        self.hidden_channels, self.control_channels = hidden_channels, control_channels
        self.net = _mlp(hidden_channels, width, hidden_channels * control_channels, layers, final=nn.Tanh())

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(z).view(*z.shape, self.control_channels)


class NeuralCDE(nn.Module):
    """Neural controlled differential equation {cite}`kidger2020neural` for irregular, partially observed series.

    The observations, with the time as an extra first channel, are interpolated into a control path
    ``X: [t_0, t_n] -> R^{C+1}`` (``interpolation="cubic"``: natural cubic spline, Sec. 3.2 of the paper;
    ``"linear"``: piecewise linear); missing entries are filled channel by channel from that channel's
    observations (:func:`dedl.interpolation.fill_missing`). Then

        ``z(t_0) = zeta_theta(t_0, x_0)``,
        ``z(t) = z(t_0) + int_{t_0}^{t} f_theta(z(s)) dX(s)``,
        ``y(t) = l_theta(z(t))``

    with ``zeta`` and ``l`` linear and ``f`` a :class:`CDEVectorField`, solved by :func:`dedl.cde.cdeint`.
    Unlike an ODE-RNN the data act continuously, through ``dX``, rather than as jumps at the observation times.

    After the last observation every data channel of ``X`` is held constant, so only the time channel moves and the
    CDE becomes the autonomous ODE ``dz/dt = f_theta(z) e_time``: that is how the model forecasts.
    ``forward(times, values, mask)`` returns ``y`` at every time of the grid, shape ``(B, T, output_channels)``;
    :attr:`nfe` holds the vector-field evaluations of the latest forward pass.
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        output_channels: int | None = None,
        width: int = 64,
        layers: int = 2,
        interpolation: str = "cubic",
        method: str = FIXED_METHOD,
        rtol: float = RTOL,
        atol: float = ATOL,
        options: dict | None = None,
    ):
        super().__init__()
        positive_int("input_channels", input_channels)
        positive_int("hidden_channels", hidden_channels)
        if interpolation not in ("cubic", "linear"):
            raise ValueError(f"interpolation must be 'cubic' or 'linear', got {interpolation!r}")
        self.input_channels = input_channels
        self.output_channels = output_channels or input_channels
        self.interpolation = interpolation
        self.initial = nn.Linear(input_channels + 1, hidden_channels)
        self.func = NFECounter(CDEVectorField(hidden_channels, input_channels + 1, width, layers))
        self.readout = nn.Linear(hidden_channels, self.output_channels)
        self.solver = _solver_kwargs(method, rtol, atol, options)
        self.nfe = 0

    def control(self, times: Tensor, values: Tensor, mask: Tensor | None = None) -> Path:
        """The control path ``X`` through ``(t_k, [t_k, x_k])``, unobserved entries filled from their channel."""
        times, values, mask = _check_series(times, values, mask, self.input_channels)
        x = torch.where(mask, values, torch.full_like(values, float("nan")))
        x = torch.cat([times.view(1, -1, 1).expand(x.shape[0], -1, 1), x], dim=-1)
        return (NaturalCubicSpline if self.interpolation == "cubic" else LinearInterpolation)(times, x)

    def forward(self, times: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
        path = self.control(times, values, mask)
        times = path.t
        z0 = self.initial(path.evaluate(times[0]))
        self.func.reset()
        z = cdeint(path, self.func, z0, times, **self.solver)  # (T, B, H)
        self.nfe = self.func.nfe
        return self.readout(z.transpose(0, 1))


class _ODEFunc(nn.Module):
    """An autonomous MLP field ``f(h)`` for the ODE parts of the recurrent models."""

    def __init__(self, dim: int, width: int, layers: int):
        super().__init__()
        self.net = _mlp(dim, width, dim, layers)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.net(h)


class ODERNN(nn.Module):
    """ODE-RNN {cite}`rubanova2019latent` (Algorithm 1): a GRU whose hidden state flows by an ODE between observations.

    With ``h_0 = 0`` at the first time, for each time ``t_i`` of the grid

        ``h_i' = ODESolve(f_theta, h_{i-1}, (t_{i-1}, t_i))``,
        ``h_i = GRUCell(h_i', [x_i * m_i, m_i])`` if any channel is observed at ``t_i``, else ``h_i = h_i'``,
        ``y_i = l_theta(h_i)``,

    with the GRU of Cho et al. {cite}`cho2014learning` and ``m_i`` the observation mask (the mask is an input too,
    so the cell knows which zeros are data). Between observations, and after the last one, the state follows the
    learned ODE: the gaps between observations enter through the length of each solve rather than as an input.
    Unobserved values never reach the state. ``forward`` returns ``y`` at every time, shape ``(B, T, output_channels)``;
    :meth:`hidden_states` returns the ``h_i`` (``reverse=True`` runs from the last time to the first, as the
    latent ODE's encoder does). :attr:`nfe` counts the ODE evaluations of the latest pass. The default solver, one
    Euler step per gap (``method="euler"``), is a cheap simplification: Rubanova et al. solve each gap with an ODE
    solver, and their code takes a single Euler step only across gaps shorter than a fiftieth of the observed
    interval. ``method``, ``rtol``, ``atol`` and ``options`` go to :func:`dedl.solvers.odeint` (e.g. ``"rk4"``
    with ``options={"step_size": 0.1}``).
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        output_channels: int | None = None,
        width: int = 64,
        layers: int = 2,
        method: str = ENCODER_METHOD,
        rtol: float = RTOL,
        atol: float = ATOL,
        options: dict | None = None,
    ):
        super().__init__()
        positive_int("input_channels", input_channels)
        positive_int("hidden_channels", hidden_channels)
        positive_int("width", width)
        positive_int("layers", layers)
        self.input_channels, self.hidden_channels = input_channels, hidden_channels
        self.output_channels = output_channels or input_channels
        self.func = NFECounter(_ODEFunc(hidden_channels, width, layers))
        self.cell = nn.GRUCell(2 * input_channels, hidden_channels)
        self.readout = nn.Linear(hidden_channels, self.output_channels)
        self.solver = _solver_kwargs(method, rtol, atol, options)
        self.nfe = 0

    def hidden_states(self, times: Tensor, values: Tensor, mask: Tensor | None = None, reverse: bool = False) -> Tensor:
        """``h_i`` at every time, shape ``(B, T, hidden_channels)``, in the order of ``times`` even when ``reverse``."""
        times, values, mask = _check_series(times, values, mask, self.input_channels)
        inputs = torch.cat([values, mask.to(values.dtype)], dim=-1)
        observed = mask.any(dim=-1, keepdim=True)
        order = range(times.shape[0] - 1, -1, -1) if reverse else range(times.shape[0])
        self.func.reset()
        h = values.new_zeros(values.shape[0], self.hidden_channels)
        states: list[Tensor] = []
        previous = None
        for i in order:
            if previous is not None:
                h = odeint(self.func, h, times[[previous, i]], **self.solver)[-1]
            h = torch.where(observed[:, i], self.cell(inputs[:, i], h), h)
            states.append(h)
            previous = i
        self.nfe = self.func.nfe
        if reverse:
            states.reverse()
        return torch.stack(states, dim=1)

    def forward(self, times: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.readout(self.hidden_states(times, values, mask))


class GRUBaseline(nn.Module):
    """The discrete baseline: a GRU {cite}`cho2014learning` fed ``[x_i * m_i, m_i, t_i - t_{i-1}]`` at every grid time.

    The "RNN-Delta t" baseline of Rubanova et al. {cite}`rubanova2019latent` (Sec. 4): the time gap is one more
    input channel and the mask tells observed zeros from missing ones, but between two inputs the state does not
    move at all; irregularity is handled only through what the network learns to do with the gap. ``forward``
    returns ``l_theta(h_i)`` at every time, shape ``(B, T, output_channels)``; :attr:`nfe` is always 0.
    """

    def __init__(self, input_channels: int, hidden_channels: int, output_channels: int | None = None, layers: int = 1):
        super().__init__()
        positive_int("input_channels", input_channels)
        positive_int("hidden_channels", hidden_channels)
        positive_int("layers", layers)
        self.input_channels = input_channels
        self.output_channels = output_channels or input_channels
        self.gru = nn.GRU(2 * input_channels + 1, hidden_channels, num_layers=layers, batch_first=True)
        self.readout = nn.Linear(hidden_channels, self.output_channels)
        self.nfe = 0

    def forward(self, times: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
        times, values, mask = _check_series(times, values, mask, self.input_channels)
        gaps = torch.cat([times.new_zeros(1), times[1:] - times[:-1]]).view(1, -1, 1).expand(values.shape[0], -1, 1)
        hidden, _ = self.gru(torch.cat([values, mask.to(values.dtype), gaps], dim=-1))
        return self.readout(hidden)


def gaussian_kl(mean: Tensor, std: Tensor) -> Tensor:
    """``KL(N(mean, diag std^2) || N(0, I)) = sum (mean^2 + std^2 - 1 - 2 log std) / 2`` over the last dimension."""
    return 0.5 * (mean**2 + std**2 - 1 - 2 * torch.log(std)).sum(-1)


class LatentODE(nn.Module):
    """Latent ODE with an ODE-RNN encoder {cite}`rubanova2019latent` (Sec. 3), after {cite}`chen2018neural` (Sec. 5).

    Generative model: ``z_0 ~ N(0, I)``, ``z(t) = ODESolve(f_theta, z_0, (t_0, t))``,
    ``x(t) ~ N(g_theta(z(t)), sigma^2 I)``.
    Recognition model: an :class:`ODERNN` runs over the observations *backward* in time, from the last to the
    first, and its final state gives ``q(z_0 | x) = N(mu, diag s^2)``. Training maximises the evidence lower bound

        ``ELBO = E_{z_0 ~ q}[ sum_{observed (i, c)} log N(x_ic; g_theta(z(t_i))_c, sigma^2) ] - KL(q(z_0) || N(0, I))``

    with the reparameterised sample ``z_0 = mu + s * eps`` (:meth:`elbo`). Because the whole trajectory is decided by
    ``z_0``, the model interpolates and extrapolates by solving the latent ODE at any times, and different samples
    of ``z_0`` give an uncertainty band (:meth:`sample`). ``forward`` decodes the posterior mean ``mu``;
    :attr:`nfe` counts encoder plus decoder evaluations of the latest pass. The decoder is solved with ``method``
    (``options``), the encoder's ODE-RNN with ``encoder_method`` (``encoder_options``); the default, one Euler step
    per gap, is a cheap simplification of Rubanova et al.'s encoder (see :class:`ODERNN`), adequate where only a
    summary of the data is needed.
    """

    def __init__(
        self,
        input_channels: int,
        latent_dim: int,
        hidden_channels: int,
        width: int = 64,
        layers: int = 2,
        obs_std: float = 0.1,
        method: str = FIXED_METHOD,
        rtol: float = RTOL,
        atol: float = ATOL,
        options: dict | None = None,
        encoder_method: str = ENCODER_METHOD,
        encoder_options: dict | None = None,
    ):
        super().__init__()
        positive_int("latent_dim", latent_dim)
        self.input_channels, self.latent_dim = input_channels, latent_dim
        self.obs_std = positive_float("obs_std", obs_std)
        self.output_channels = input_channels
        self.encoder = ODERNN(
            input_channels, hidden_channels, 2 * latent_dim, width, layers, encoder_method, rtol, atol, encoder_options
        )
        self.func = NFECounter(_ODEFunc(latent_dim, width, layers))
        self.decoder = nn.Linear(latent_dim, input_channels)
        self.solver = _solver_kwargs(method, rtol, atol, options)
        self.nfe = 0

    def encode(self, times: Tensor, values: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of ``q(z_0 | observations)``, each ``(B, latent_dim)``."""
        h0 = self.encoder.hidden_states(times, values, mask, reverse=True)[:, 0]
        mean, raw = self.encoder.readout(h0).chunk(2, dim=-1)
        return mean, nn.functional.softplus(raw) + 1e-4

    def decode(self, z0: Tensor, times: Tensor) -> Tensor:
        """``g_theta(z(t))`` at every time, for ``z0`` of shape ``(..., latent_dim)``: shape ``(..., T, C)``."""
        times = torch.as_tensor(times).to(device=z0.device, dtype=z0.dtype)
        self.func.reset()
        z = odeint(self.func, z0, times, **self.solver)  # (T, ..., L)
        return self.decoder(z.movedim(0, -2))

    def forward(self, times: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
        mean, _ = self.encode(times, values, mask)
        out = self.decode(mean, times)
        self.nfe = self.encoder.nfe + self.func.nfe
        return out

    def sample(self, times: Tensor, values: Tensor, mask: Tensor | None = None, n_samples: int = 10) -> Tensor:
        """Decoded trajectories for ``n_samples`` draws of ``z_0 ~ q``, shape ``(n_samples, B, T, C)``."""
        positive_int("n_samples", n_samples)
        mean, std = self.encode(times, values, mask)
        z0 = mean + std * torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        out = self.decode(z0, times)
        self.nfe = self.encoder.nfe + self.func.nfe
        return out

    def elbo(
        self,
        times: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        target_values: Tensor | None = None,
        target_mask: Tensor | None = None,
        n_samples: int = 1,
        kl_weight: float = 1.0,
    ) -> Tensor:
        """The ELBO of each series, shape ``(B,)``: log-likelihood of the observed targets minus ``kl_weight`` x KL.

        The encoder reads ``(values, mask)``; the likelihood is evaluated on ``(target_values, target_mask)``
        (default: the same entries), for instance later times for extrapolation or held-out points for interpolation
        (Rubanova et al., Sec. 4). The expectation is a Monte Carlo average over ``n_samples`` reparameterised draws;
        ``kl_weight < 1`` is the usual KL warm-up.
        """
        positive_int("n_samples", n_samples)
        times_c, values_c, mask_c = _check_series(times, values, mask, self.input_channels)
        if target_values is None:
            target_values, target_mask = values_c, mask_c
        else:
            _, target_values, target_mask = _check_series(times_c, target_values, target_mask, self.input_channels)
        mean, std = self.encode(times_c, values_c, mask_c)
        z0 = mean + std * torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        prediction = self.decode(z0, times_c)  # (S, B, T, C)
        self.nfe = self.encoder.nfe + self.func.nfe
        log_norm = math.log(self.obs_std) + 0.5 * math.log(2 * math.pi)
        log_prob = -0.5 * ((target_values - prediction) / self.obs_std) ** 2 - log_norm
        log_lik = (log_prob * target_mask).sum(dim=(-2, -1)).mean(0)
        return log_lik - kl_weight * gaussian_kl(mean, std)
