"""One name for each thing in dedl.nn: the normalisation switch, the order of ``hidden`` / ``kernel_size``, the
type of ``trajectory()``, the cost ``nfe``, one exception type per kind of mistake, the solver defaults."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import dedl.nn.odenets as odenets
from dedl.nn import checks, classifier, pde, resnets, sdenets, stable
from dedl.nn.odenets import (
    AugmentedNeuralODE,
    ConvVectorField,
    MLPVectorField,
    NeuralODE,
    SecondOrderNeuralODE,
    odenet,
)
from dedl.nn.pde import HyperbolicCNN, ParabolicCNN, PDEForce
from dedl.nn.resnets import EulerResNet, FractalNet, LMResNet, PolyNet, ResidualFunction, RKNet
from dedl.nn.sdenets import DropoutResNet, GaussianNoiseResNet, ShakeShakeResNet, StochasticDepthResNet
from dedl.nn.stable import AntisymmetricResNet, HamiltonianNet, LeapfrogNet, RevNet

MODULES = (resnets, stable, pde, odenets, classifier, sdenets)

# every discrete body, built small: (make, input); depth 3 throughout
BODIES = {
    "EulerResNet": (lambda: EulerResNet(4, 3), (2, 4, 5, 5)),
    "LMResNet": (lambda: LMResNet(4, 3), (2, 4, 5, 5)),
    "RKNet": (lambda: RKNet(4, 3, kind="linear"), (2, 4)),
    "PolyNet": (lambda: PolyNet(4, 3, kind="linear"), (2, 4)),
    "FractalNet": (lambda: FractalNet(4, 3, kind="linear"), (2, 4)),
    "AntisymmetricResNet": (lambda: AntisymmetricResNet(4, 3, kind="linear"), (2, 4)),
    "RevNet": (lambda: RevNet(4, 3), (2, 4, 5, 5)),
    "HamiltonianNet": (lambda: HamiltonianNet(4, 3, kind="linear"), (2, 4)),
    "LeapfrogNet": (lambda: LeapfrogNet(4, 3), (2, 4, 5, 5)),
    "ParabolicCNN": (lambda: ParabolicCNN(4, 3), (2, 4, 5, 5)),
    "HyperbolicCNN": (lambda: HyperbolicCNN(4, 3), (2, 4, 5, 5)),
    "DropoutResNet": (lambda: DropoutResNet(4, 3, sigma=0.5), (2, 4, 5, 5)),
    "StochasticDepthResNet": (lambda: StochasticDepthResNet(4, 3, kind="linear", sigma=0.5), (2, 4)),
    "ShakeShakeResNet": (lambda: ShakeShakeResNet(4, 3, sigma=0.5), (2, 4, 5, 5)),
    "GaussianNoiseResNet": (lambda: GaussianNoiseResNet(4, 3, kind="linear", sigma=0.5), (2, 4)),
}


def _classes_and_functions():
    for module in MODULES:
        for name, obj in vars(module).items():
            own = getattr(obj, "__module__", None) == module.__name__
            if own and (inspect.isclass(obj) or inspect.isfunction(obj)):
                yield name, obj


@pytest.mark.parametrize("name", sorted(BODIES))
def test_trajectory_is_one_stacked_tensor(name):
    make, shape = BODIES[name]
    torch.manual_seed(0)
    body = make().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        states = body.trajectory(x)
        assert isinstance(states, torch.Tensor) and states.shape == (body.depth + 1, *shape)
        assert torch.allclose(states[-1], body(x), atol=1e-6)


@pytest.mark.parametrize("model", ["plain", "augmented", "second_order"])
def test_ode_trajectories_are_stacked_tensors(model):
    torch.manual_seed(0)
    x, t = torch.randn(5, 3), torch.linspace(0, 1, 4)
    make = {
        "plain": lambda: NeuralODE(MLPVectorField(3)),
        "augmented": lambda: AugmentedNeuralODE(MLPVectorField(5), augment_dim=2),
        "second_order": lambda: SecondOrderNeuralODE(MLPVectorField(6, out_dim=3)),
    }[model]
    states = make().trajectory(x, t)  # the augmented model keeps its two extra features by default
    assert isinstance(states, torch.Tensor) and states.shape[:2] == (4, 5) and states.dim() == 3


@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_body_exposes_nfe(name):
    body = BODIES[name][0]()
    assert isinstance(body.nfe, int) and body.nfe >= body.depth
    assert not hasattr(body, "nfe_forward")


def test_neural_ode_nfe_is_the_latest_forward_pass_and_nfe_backward_the_adjoint():
    torch.manual_seed(0)
    node = NeuralODE(MLPVectorField(3), method="rk4", options={"step_size": 0.25}, adjoint=True)
    node(torch.randn(4, 3)).sum().backward()
    assert node.nfe == 16 and node.nfe_backward > 0
    assert not hasattr(node, "nfe_forward")


BAD_NORMS = ["layer", True, False, "Batch"]
NORMED = {
    "ResidualFunction": lambda norm: ResidualFunction(4, norm=norm),
    "ResidualFunction.count": lambda norm: ResidualFunction.count(4, norm=norm),
    "EulerResNet": lambda norm: EulerResNet(4, 2, norm=norm),
    "RKNet": lambda norm: RKNet(4, 2, norm=norm),
    "PDEForce": lambda norm: PDEForce(4, norm=norm),
    "ParabolicCNN": lambda norm: ParabolicCNN(4, 2, norm=norm),
    "HyperbolicCNN": lambda norm: HyperbolicCNN(4, 2, norm=norm),
    "ConvVectorField": lambda norm: ConvVectorField(4, norm=norm),
    "odenet": lambda norm: odenet(1, 4, 10, norm=norm),
}


@pytest.mark.parametrize("name", sorted(NORMED))
@pytest.mark.parametrize("bad", BAD_NORMS, ids=repr)
def test_a_bad_norm_raises_value_error_everywhere(name, bad):
    with pytest.raises(ValueError, match="norm must be one of"):
        NORMED[name](bad)


@pytest.mark.parametrize("name", sorted(NORMED))
def test_norm_none_builds_without_normalisation_layers(name):
    model = NORMED[name](None)
    if isinstance(model, nn.Module):
        norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
        body = model.body if name == "odenet" else model
        assert not any(isinstance(m, norms) for m in body.modules())


def test_one_spelling_of_the_normalisation_switch():
    for name, obj in _classes_and_functions():
        target = obj.__init__ if inspect.isclass(obj) else obj
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        assert "normalization" not in params and "normalisation" not in params, name
        if "norm" in params and params["norm"].default is not inspect.Parameter.empty:
            assert params["norm"].default in ("batch", "group"), name  # a string, never a bool


def test_hidden_comes_before_kernel_size_everywhere():
    seen = 0
    for name, obj in _classes_and_functions():
        target = obj.__init__ if inspect.isclass(obj) else obj
        try:
            params = list(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            continue
        if "hidden" in params and "kernel_size" in params:
            seen += 1
            assert params.index("hidden") < params.index("kernel_size"), name
    assert seen >= 10


def test_solver_defaults_are_stated_once():
    constants = {"method": {odenets.METHOD, odenets.FIXED_METHOD, odenets.ENCODER_METHOD},
                 "encoder_method": {odenets.ENCODER_METHOD},
                 "rtol": {odenets.RTOL}, "atol": {odenets.ATOL, odenets.ODENET_ATOL}}
    seen = 0
    for name, obj in _classes_and_functions():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        target = obj.__init__ if inspect.isclass(obj) else obj
        for param, allowed in constants.items():
            p = inspect.signature(target).parameters.get(param)
            if p is not None:
                seen += 1
                assert p.default in allowed, (name, param, p.default)
    assert seen >= 20
    assert inspect.signature(NeuralODE).parameters["atol"].default == odenets.ATOL
    assert inspect.signature(odenet).parameters["atol"].default == odenets.ODENET_ATOL


@pytest.mark.parametrize(
    "call",
    [
        lambda: checks.positive_int("depth", "3"),
        lambda: checks.positive_float("T", "1"),
        lambda: checks.probability("survival", "0.5", allow_zero=False, allow_one=True),
        lambda: EulerResNet(4, 2)([[1.0]]),
        lambda: stable.Operator(1, None, "conv", 3, stencil=[[1.0]]),
        lambda: AugmentedNeuralODE(MLPVectorField(5), augment_dim=2).augment([1.0]),
        lambda: SecondOrderNeuralODE(MLPVectorField(6, out_dim=3)).initial_state([1.0]),
        lambda: classifier.ImageClassifier(EulerResNet(4, 1), 1, 4, 10)([1.0]),
        lambda: NeuralODE(MLPVectorField(3))([1.0]),
    ],
)
def test_a_wrong_type_raises_type_error(call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: checks.positive_int("depth", 0),
        lambda: checks.positive_float("T", -1.0),
        lambda: checks.probability("survival", 1.5, allow_zero=False, allow_one=True),
        lambda: EulerResNet(4, 2)(torch.randn(2, 4)),
        lambda: stable.Operator(1, None, "conv", 3, stencil=torch.zeros(2, 3, 3)),
        lambda: AugmentedNeuralODE(MLPVectorField(5), augment_dim=2).augment(torch.zeros(3)),
        lambda: SecondOrderNeuralODE(MLPVectorField(6, out_dim=3)).initial_state(torch.zeros(3)),
        lambda: classifier.ImageClassifier(EulerResNet(4, 1), 1, 4, 10)(torch.zeros(2, 1, 4)),
        lambda: EulerResNet(4, 2, kind="dense"),
    ],
)
def test_a_wrong_value_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
