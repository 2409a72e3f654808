"""Speed and memory of dedl's solvers beside torchdiffeq (and torchsde): one run, one table.

    python benchmarks/solvers.py            # the full table (a few minutes on a busy 2-core CPU)
    python benchmarks/solvers.py --quick    # fewer repeats, for a smoke test

Not a timed test: it prints ratios from one run on one thread (``torch.set_num_threads(1)``). Times are
CPU times of the benchmarking thread, medians over repeats taken round-robin (every candidate once per
round, so that load from other processes hits them alike); the ``best`` column gives the ratio of the
fastest repeats. The vector field is an MLP 2 -> 64 -> 2 (tanh), batch 256, on t in [0, 1], float32.

The table is built from a list of section functions, each returning rows (dicts with the keys of
``COLUMNS``); ``SECTIONS`` at the bottom lists them. To add a section, write a function and append it.

Sections:
    (a) fixed step: dedl rk4 vs torchdiffeq rk4 (100 steps) vs the bare cost of the same 400 evaluations;
    (b) adaptive: dedl dopri5 vs torchdiffeq dopri5 at rtol 1e-6, atol 1e-9: NFE, time, error against a
        float64 reference at rtol 1e-12; and dedl at the loosest rtol whose error matches torchdiffeq's;
    (c) memory: backprop through rk4 vs the adjoint at 10, 100, 1000 steps (forward and backward): the
        peak of the bytes held by torch's CPU allocator, from the allocation events that
        ``torch.profiler`` records (:func:`dedl.utils.peak_allocated_bytes`); time from a separate, unprofiled run.
    (d) SDE rows: :func:`sde_rows` (dedl.solvers.sdeint vs torchsde: euler, milstein, srk, reversible_heun).
    (e) stochastic adjoint: :func:`sde_adjoint_rows` (gradient error against backprop through sdeint on the
        same Brownian path, time and peak memory at 10, 100, 1000 steps; dedl beside torchsde).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
from torch import nn

from dedl.solvers import odeint, odeint_adjoint
from dedl.utils import NFECounter, peak_allocated_bytes

COLUMNS = {
    "section": "section",
    "case": "case",
    "time_ms": "time (ms)",
    "ratio": "ratio (median)",
    "best": "ratio (best)",
    "nfe": "NFE",
    "error": "max error",
    "memory_mb": "peak mem (MB)",
}

REPEATS = 25


class MLPField(nn.Module):
    """The benchmark's vector field: an MLP 2 -> 64 -> 2 with tanh, independent of t."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def setup(seed: int = 0) -> tuple[MLPField, torch.Tensor]:
    torch.manual_seed(seed)
    return MLPField(), torch.randn(256, 2)


def timeit(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median and minimum seconds of each candidate, measured round-robin after one warm-up each.

    Seconds of CPU time of this thread (``time.thread_time``), not wall time: on a machine shared with
    other processes, time spent waiting for a core would otherwise land on whichever candidate ran."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.thread_time()
            fn()
            times[name].append(time.thread_time() - start)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


# ---- (a) fixed step ------------------------------------------------------------------------------


def rk4_rows() -> list[dict]:
    func, y0 = setup()
    t = torch.linspace(0, 1, 101)  # 100 steps of rk4 = 400 evaluations
    t0 = torch.tensor(0.0)
    import torchdiffeq

    def bare():
        for _ in range(400):
            func(t0, y0)

    candidates = {
        "bare: 400 evaluations": bare,
        "dedl rk4": lambda: odeint(func, y0, t, method="rk4"),
        "torchdiffeq rk4": lambda: torchdiffeq.odeint(func, y0, t, method="rk4"),
    }
    rows = []
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            res = timeit(candidates, REPEATS)
        base_med, base_min = res["bare: 400 evaluations"]
        for name, (med, best) in res.items():
            rows.append(dict(
                section="(a) fixed step",
                case=f"{name} [{'grad' if grad else 'no_grad'}]",
                time_ms=1e3 * med,
                ratio=f"{med / base_med:.3f} x bare",
                best=f"{best / base_min:.3f} x bare",
                nfe=400,
            ))
        med_d, best_d = res["dedl rk4"]
        med_t, best_t = res["torchdiffeq rk4"]
        rows.append(dict(
            section="(a) fixed step",
            case=f"dedl / torchdiffeq [{'grad' if grad else 'no_grad'}]",
            ratio=f"{med_d / med_t:.3f} x td",
            best=f"{best_d / best_t:.3f} x td",
        ))
    return rows


# ---- (b) adaptive --------------------------------------------------------------------------------


def dopri5_rows() -> list[dict]:
    import torchdiffeq

    func, y0 = setup()
    t = torch.linspace(0, 1, 11)  # outputs inside the steps exercise the interpolation too
    func64 = copy.deepcopy(func).double()
    with torch.no_grad():
        ref = odeint(func64, y0.double(), t.double(), rtol=1e-12, atol=1e-14)

    def run(solve, rtol):
        counter = NFECounter(func)
        with torch.no_grad():
            y = solve(counter, rtol)
        return counter.nfe, float((y.double() - ref).abs().max())

    dedl = lambda f, rtol, **o: odeint(f, y0, t, method="dopri5", rtol=rtol, atol=1e-9, options=o)  # noqa: E731
    td = lambda f, rtol: torchdiffeq.odeint(f, y0, t, method="dopri5", rtol=rtol, atol=1e-9)  # noqa: E731
    nfe_t, err_t = run(td, 1e-6)
    nfe_d, err_d = run(dedl, 1e-6)
    nfe_i, err_i = run(lambda f, r: dedl(f, r, beta=0.04), 1e-6)
    # the loosest dedl tolerance (of 1e-3 .. 1e-6) whose error is at most torchdiffeq's at 1e-6
    matched = next(r for r in (1e-3, 1e-4, 1e-5, 1e-6) if run(dedl, r)[1] <= err_t)
    nfe_m, err_m = run(dedl, matched)
    with torch.no_grad():
        res = timeit({
            "td": lambda: td(func, 1e-6),
            "dedl": lambda: dedl(func, 1e-6),
            "dedl_pi": lambda: dedl(func, 1e-6, beta=0.04),
            "matched": lambda: dedl(func, matched),
        }, REPEATS)
    rows = []
    for key, case, nfe, err in (
        ("td", "torchdiffeq dopri5, rtol 1e-6", nfe_t, err_t),
        ("dedl", "dedl dopri5, rtol 1e-6 (I control, default)", nfe_d, err_d),
        ("dedl_pi", "dedl dopri5, rtol 1e-6, beta=0.04 (PI control)", nfe_i, err_i),
        ("matched", f"dedl dopri5, rtol {matched:g} (error <= td's)", nfe_m, err_m),
    ):
        med, best = res[key]
        rows.append(dict(
            section="(b) adaptive",
            case=case,
            time_ms=1e3 * med,
            ratio=f"{med / res['td'][0]:.3f} x td",
            best=f"{best / res['td'][1]:.3f} x td",
            nfe=nfe,
            error=f"{err:.2e}",
        ))
    return rows


# ---- (c) memory ------------------------------------------------------------------------------------


def memory_rows() -> list[dict]:
    func, y0 = setup()
    y0.requires_grad_(True)
    t = torch.tensor([0.0, 1.0])
    rows = []
    for name, solve in (("backprop", odeint), ("adjoint", odeint_adjoint)):
        for steps in (10, 100, 1000):

            def once():
                ys = solve(func, y0, t, method="rk4", options={"step_size": 1.0 / steps})
                ys[-1].square().sum().backward()

            once()  # warm-up
            start = time.perf_counter()
            once()
            seconds = time.perf_counter() - start
            peak = peak_allocated_bytes(once)
            rows.append(dict(
                section="(c) memory",
                case=f"{name} through rk4, {steps} steps (fwd+bwd)",
                time_ms=1e3 * seconds,
                nfe=4 * steps,
                memory_mb=f"{peak / 2**20:.3f}",
            ))
    base = {r["case"].split(",")[0]: float(r["memory_mb"]) for r in rows if "10 steps" in r["case"]}
    for r in rows:
        r["ratio"] = f"{float(r['memory_mb']) / base[r['case'].split(',')[0]]:.2f} x 10 steps"
    return rows


# ---- (d) SDE solvers ----------------------------------------------------------------------------------


class DiagonalNoiseSDE(nn.Module):
    """dY = MLP(Y) dt + 0.5 Y dW (Itô, diagonal noise): the benchmark's vector field as the drift."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.field(t, y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * y


class StratonovichForm(nn.Module):
    """The same SDE in Stratonovich form, dY = (MLP(Y) - Y / 8) dt + 0.5 Y o dW (drift minus (1/2) g dg/dy)."""

    noise_type, sde_type = "diagonal", "stratonovich"

    def __init__(self, ito: DiagonalNoiseSDE):
        super().__init__()
        self.ito = ito

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ito.f(t, y) - 0.125 * y

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ito.g(t, y)


def sde_rows() -> list[dict]:
    """SDE solvers beside torchsde: dedl.solvers.sdeint vs torchsde.sdeint, Euler-Maruyama, Milstein, srk and
    reversible Heun.

    dY = MLP(Y) dt + 0.5 Y dW with diagonal noise, 100 steps of dt = 0.01, under ``torch.no_grad()``. Each call
    includes building its Brownian motion (the ``BrownianPath`` row excepted: built once, outside the timing).
    Ratios are against torchsde given an explicit ``BrownianInterval(0, 1, size, dt=0.01)`` (for srk and
    reversible Heun with ``levy_area_approximation="space-time"``, which srk needs). torchsde's default call
    (``bm=None``, ~1 s) is timed for Euler-Maruyama and Milstein only, with at most 3 repeats. The error column
    holds the *strong* error, the batch mean of |Y_1 - Y_1^ref|, where Y^ref is Milstein (srk for the srk and
    reversible Heun rows) with dt / 32 on the same Brownian motion and the same library; for torchsde's default
    call it is measured on a ``BrownianInterval`` built the way the default is (no ``dt``). Reversible Heun
    solves the same SDE in Stratonovich form. The plain loop (all increments from one randn call, then
    y + f h + g dW) is the floor.
    """
    import torchsde

    from dedl.solvers import BrownianPath, sdeint

    field, y0 = setup()
    ito = DiagonalNoiseSDE(field)
    strat = StratonovichForm(ito)
    batch, d = y0.shape
    dt, fine = 0.01, 32
    ts = torch.tensor([0.0, 1.0])
    path = BrownianPath(
        0.0, 1.0, (batch, d), dt=dt / fine, seed=0, dtype=y0.dtype, levy_area_approximation="space-time"
    )

    def interval(explicit_dt: bool, entropy: int = 0, levy: str = "none") -> torchsde.BrownianInterval:
        extra = {"dt": dt} if explicit_dt else {}
        return torchsde.BrownianInterval(
            0.0, 1.0, size=(batch, d), dtype=y0.dtype, entropy=entropy, levy_area_approximation=levy, **extra
        )

    def plain_loop() -> torch.Tensor:
        y, dw = y0, torch.randn(100, batch, d) * dt**0.5
        for i in range(100):
            y = y + ito.f(ts[0], y) * dt + ito.g(ts[0], y) * dw[i]
        return y

    rows = []
    for method in ("euler", "milstein", "srk", "reversible_heun"):
        sde = strat if method == "reversible_heun" else ito
        ref_method = "milstein" if method in ("euler", "milstein") else "srk"
        levy = "none" if ref_method == "milstein" else "space-time"

        def strong_error(solve, bm) -> float:
            ref = solve(ito, y0, ts, method=ref_method, dt=dt / fine, bm=bm)[-1]
            return float((solve(sde, y0, ts, method=method, dt=dt, bm=bm)[-1] - ref).norm(dim=-1).mean())

        candidates = {
            "dedl sdeint, bm=None": lambda: sdeint(sde, y0, ts, method=method, dt=dt, seed=0),
            "dedl sdeint, pre-built BrownianPath": lambda: sdeint(sde, y0, ts, method=method, dt=dt, bm=path),
            "torchsde, BrownianInterval(dt=0.01)": lambda: torchsde.sdeint(
                sde, y0, ts, method=method, dt=dt, bm=interval(True, levy=levy)),
        }
        if method == "euler":
            candidates["plain Euler-Maruyama loop"] = plain_loop
        default = {"torchsde, bm=None (default)": lambda: torchsde.sdeint(sde, y0, ts, method=method, dt=dt)}
        with torch.no_grad():
            res = timeit(candidates, REPEATS)
            err_dedl = strong_error(sdeint, path)
            errors = {
                "dedl sdeint, bm=None": err_dedl,
                "dedl sdeint, pre-built BrownianPath": err_dedl,
                "torchsde, BrownianInterval(dt=0.01)": strong_error(
                    torchsde.sdeint, interval(True, entropy=1, levy=levy)),
            }
            if ref_method == "milstein":
                res.update(timeit(default, min(REPEATS, 3)))
                errors["torchsde, bm=None (default)"] = strong_error(torchsde.sdeint, interval(False, entropy=1))
        base_med, base_min = res["torchsde, BrownianInterval(dt=0.01)"]
        for name, (med, best) in res.items():
            rows.append(dict(
                section="(d) SDE",
                case=f"{method}: {name}",
                time_ms=1e3 * med,
                ratio=f"{med / base_med:.3f} x ts(BI)",
                best=f"{best / base_min:.3f} x ts(BI)",
                error=f"{errors[name]:.2e} strong" if name in errors else None,
            ))
    return rows


# ---- (e) stochastic adjoint ------------------------------------------------------------------------------


def sde_adjoint_rows() -> list[dict]:
    """Gradients through an SDE solve: backprop through ``sdeint`` vs the stochastic adjoint, dedl and torchsde.

    The Stratonovich SDE of (d), dY = (MLP(Y) - Y/8) dt + 0.5 Y o dW, on t in [0, 1] with 10, 100, 1000 steps;
    loss ``Y_1.square().sum()``, gradients with respect to y0 and the MLP's parameters. Every candidate runs on
    the same ``BrownianPath`` (drawn on the finest grid, outside the measurements; torchsde accepts it as
    ``bm``). Error: the largest gradient error relative to the largest gradient entry, against backpropagation
    through ``dedl.solvers.sdeint`` with the same forward method on the same path; the continuous adjoint
    (midpoint) converges to it with the step, reversible Heun's adjoint equals it up to float32 rounding.
    Time: CPU time of one forward and backward pass (median of the repeats); peak memory as in (c).
    """
    import torchsde

    from dedl.solvers import BrownianPath, sdeint, sdeint_adjoint

    field, y0 = setup()
    sde = StratonovichForm(DiagonalNoiseSDE(field))
    y0 = y0.requires_grad_(True)
    inputs = (y0, *sde.parameters())
    path = BrownianPath(0.0, 1.0, tuple(y0.shape), dt=1e-3, seed=0, dtype=y0.dtype)
    candidates = {
        "backprop through dedl sdeint": sdeint,
        "dedl sdeint_adjoint": sdeint_adjoint,
        "torchsde sdeint_adjoint": torchsde.sdeint_adjoint,
    }
    rows = []
    for method in ("midpoint", "reversible_heun"):
        adjoint_method = {"midpoint": "midpoint", "reversible_heun": "adjoint_reversible_heun"}[method]
        for steps in (10, 100, 1000):
            dt = 1.0 / steps

            def gradients(solve):
                kwargs = {} if solve is sdeint else {"adjoint_method": adjoint_method}
                ys = solve(sde, y0, torch.tensor([0.0, 1.0]), bm=path, method=method, dt=dt, **kwargs)
                return torch.autograd.grad(ys[-1].square().sum(), inputs)

            ref = gradients(sdeint)
            scale = max(float(g.abs().max()) for g in ref)
            runs = {name: (lambda solve=solve: gradients(solve)) for name, solve in candidates.items()}
            times = timeit(runs, max(1, REPEATS // 10))
            for name, solve in candidates.items():
                grads = gradients(solve)
                error = max(float((g - r).abs().max()) for g, r in zip(grads, ref)) / scale
                rows.append(dict(
                    section="(e) SDE adjoint",
                    case=f"{method}, {steps} steps: {name}",
                    time_ms=1e3 * times[name][0],
                    ratio=f"{times[name][0] / times['torchsde sdeint_adjoint'][0]:.3f} x ts adj",
                    error=None if solve is sdeint else f"{error:.1e} grad",
                    memory_mb=f"{peak_allocated_bytes(lambda solve=solve: gradients(solve)) / 2**20:.3f}",
                ))
    return rows


# ---- the table --------------------------------------------------------------------------------------

SECTIONS: list[Callable[[], list[dict]]] = [rk4_rows, dopri5_rows, memory_rows, sde_rows, sde_adjoint_rows]


def format_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    keys = [k for k in COLUMNS if any(k in row for row in rows)]
    cells = [[COLUMNS[k] for k in keys]] + [[cell(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cells[0], widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    return "\n".join(lines)


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        REPEATS = 3
    rows = []
    for section in SECTIONS:
        rows += section()
    print(f"torch {torch.__version__}, 1 thread; MLP 2-64-2 tanh, batch 256, t in [0, 1], float32")
    print(format_table(rows))


if __name__ == "__main__":
    main()
