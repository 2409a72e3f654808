"""dedl.generative.cnf: the instantaneous change of variables on a linear field, FFJORD's estimator, inversion."""

import math

import pytest
import torch
from torch import nn

from dedl.generative import CNF, standard_normal_log_prob
from dedl.nn.odenets import MLPVectorField


class Linear(nn.Module):
    """f(t, z) = A z."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)
        self.dim = a.shape[0]

    def forward(self, t, z):
        return z @ self.a.T


A = torch.tensor([[-0.3, 0.8], [-0.5, 0.4]], dtype=torch.float64)


def closed_form(x, t0, t1):
    z = x @ torch.linalg.matrix_exp(A * (t1 - t0)).T
    return standard_normal_log_prob(z) + A.trace() * (t1 - t0)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (0.5, 2.0)])
def test_log_prob_matches_the_closed_form_on_a_linear_field(t0, t1):
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cnf = CNF(Linear(A.clone()), t0=t0, t1=t1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(cnf.log_prob(x), closed_form(x, t0, t1), rtol=1e-7, atol=1e-7)
    assert cnf.nfe > 0


def test_adjoint_log_prob_and_gradient_agree_with_backprop():
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for adjoint in (False, True):
        cnf = CNF(Linear(A.clone()), rtol=1e-9, atol=1e-10, adjoint=adjoint)
        cnf.log_prob(x).sum().backward()
        grads.append(cnf.func.func.a.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_hutchinson_is_unbiased():
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = CNF(Linear(A.clone()), rtol=1e-8, atol=1e-9).log_prob(x)
    cnf = CNF(Linear(A.clone()), trace="hutchinson", noise="rademacher", rtol=1e-8, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([cnf.log_prob(x, generator=g).detach() for _ in range(400)])
    assert not torch.allclose(draws[0], draws[1])  # a random estimate
    err = (draws.mean(0) - exact.detach()).abs()
    assert (err < 4 * draws.std(0) / math.sqrt(len(draws)) + 1e-9).all(), err


def test_sample_inverts_the_forward_map():
    torch.manual_seed(0)
    cnf = CNF(MLPVectorField(2, 16, time_dependent=True).double(), rtol=1e-9, atol=1e-10)
    x = torch.randn(6, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(cnf.inverse(cnf(x)), x, rtol=1e-6, atol=1e-6)
        z = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        draws = cnf.sample(3, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(draws, cnf.inverse(z))


def test_regularizers_ride_along_in_training_only():
    torch.manual_seed(0)
    cnf = CNF(MLPVectorField(2, 8, time_dependent=True), regularizers=("kinetic", "jacobian"), trace="hutchinson")
    x = torch.randn(5, 2)
    logp = cnf.log_prob(x)
    assert set(cnf.penalties) == {"kinetic", "jacobian"}
    assert cnf.penalties["kinetic"].shape == (5,) and (cnf.penalties["kinetic"] > 0).all()
    (-logp.mean() + cnf.penalties["kinetic"].mean()).backward()
    cnf.eval()
    cnf.log_prob(x)
    assert cnf.penalties == {}


def test_bad_input_is_refused():
    f = MLPVectorField(2, 8)
    with pytest.raises(TypeError, match="nn.Module"):
        CNF(lambda t, z: z)
    with pytest.raises(ValueError, match="trace"):
        CNF(f, trace="skilling")
    with pytest.raises(ValueError, match="t0 < t1"):
        CNF(f, t0=1.0, t1=0.0)
    with pytest.raises(ValueError, match="regularizer"):
        CNF(f, regularizers=("kinetik",))
    with pytest.raises(ValueError, match="noise"):
        CNF(f, noise="uniform")
    cnf = CNF(f)
    with pytest.raises(ValueError, match="shape"):
        cnf.log_prob(torch.randn(4, 3))
    with pytest.raises(TypeError, match="floating"):
        cnf.log_prob(torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="n must"):
        cnf.sample(0)

    class NoDim(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, t, z):
            return self.w * z

    with pytest.raises(ValueError, match="dimension"):
        CNF(NoDim()).sample(3)
