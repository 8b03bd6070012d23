"""AdamW for bf16 weights: torch.optim.AdamW's math, unbiased rounding, found_inf, DCP state."""

from __future__ import annotations

import pytest
import torch

from llm360.train.optim import AdamWLowPrecision, round_stochastic


def make_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype)) for shape in [(7, 5), (5,), (3, 4, 2)]]


def test_matches_torch_adamw_on_fp32_weights():
    ours, ref = make_params(), make_params()
    kw = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
    opt = AdamWLowPrecision([{"params": ours[:2], "weight_decay": 0.1}, {"params": ours[2:], "weight_decay": 0.0}], **kw)
    oracle = torch.optim.AdamW([{"params": ref[:2], "weight_decay": 0.1}, {"params": ref[2:], "weight_decay": 0.0}],
                               foreach=False, **kw)
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        for a, b in zip(ours, ref):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        grads = [a.grad.clone() for a in ours]
        for o in (opt, oracle):
            for group in o.param_groups:
                group["lr"] = 3e-2 * (0.9 ** step)
        opt.step()
        oracle.step()
        assert all(torch.equal(a.grad, g) for a, g in zip(ours, grads))  # gradients left alone
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, ref):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt.state[a][key], oracle.state[b][key], rtol=1e-5, atol=1e-9)
        assert float(opt.state[a]["step"]) == float(oracle.state[b]["step"]) == 12


def test_a_withheld_first_step_changes_nothing():
    params = make_params(torch.bfloat16)
    before = [p.detach().clone() for p in params]
    opt = AdamWLowPrecision(params, lr=1e-2)
    opt.found_inf = torch.ones(())
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(opt.state[p]["step"]) == 0 and not opt.state[p]["exp_avg"].any() for p in params)


def test_found_inf_leaves_everything_as_it_was():
    params = make_params(torch.bfloat16)
    opt = AdamWLowPrecision(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.ones(())
    opt.step()
    for p, b, st in zip(params, before, state):
        assert torch.equal(p, b)
        for key, value in st.items():
            assert torch.equal(opt.state[p][key], value), key
    opt.found_inf = torch.zeros(())
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(float(opt.state[p]["step"]) == 2 for p in params)
    assert all(p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32 for p in params)


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour():
    x = torch.full((200_000,), 1.0 + 2 ** -9 + 2 ** -11)  # between the bf16 neighbours 1.0 + 2**-8 * {0, 1}
    out = round_stochastic(x, torch.bfloat16, torch.Generator().manual_seed(0)).float()
    assert set(out.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert out.mean().item() == pytest.approx(x[0].item(), abs=2e-5)
    exact = torch.tensor([1.0, -2.5, 0.0, 3.0 * 2 ** -20])  # representable: never moved
    assert torch.equal(round_stochastic(exact, torch.bfloat16, None).float(), exact)
    neg = -x
    assert round_stochastic(neg, torch.bfloat16, torch.Generator().manual_seed(1)).float().mean().item() == \
        pytest.approx(neg[0].item(), abs=2e-5)


def test_small_updates_survive_on_bf16_weights():
    """Updates of a quarter bf16 step: nearest rounding would keep the weight fixed forever."""
    w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = AdamWLowPrecision([w], lr=2 ** -10, weight_decay=0.0)  # each step moves ~lr = 1/4 of a bf16 step
    for step in range(40):
        w.grad = torch.ones_like(w)
        opt.rounding_seed = step
        opt.step()
    assert w.float().mean().item() == pytest.approx(1.0 - 40 * 2 ** -10, abs=2e-3)


def test_rounding_is_repeatable_from_the_seed():
    def run():
        params = make_params(torch.bfloat16)
        opt = AdamWLowPrecision(params, lr=1e-3)
        for step in range(3):
            for p in params:
                p.grad = torch.ones_like(p) * (step + 1)
            opt.rounding_seed = 100 + step
            opt.step()
        return params

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_state_dict_round_trip_keeps_fp32_moments():
    params = make_params(torch.bfloat16)
    opt = AdamWLowPrecision(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn(p.shape).to(torch.bfloat16)
    opt.step()
    other_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = AdamWLowPrecision(other_params, lr=1e-3)
    other.load_state_dict(opt.state_dict())
    for p, q in zip(params, other_params):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert other.state[q][key].dtype == torch.float32
            assert torch.equal(other.state[q][key], opt.state[p][key]), key


def test_compiled_update_matches_the_eager_one():
    pytest.importorskip("torch._inductor")

    def run(compile: bool, dtype):
        params = make_params(dtype, seed=3)
        opt = AdamWLowPrecision([{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}],
                                lr=1e-2, compile=compile)
        gen = torch.Generator().manual_seed(5)
        for step in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.found_inf = torch.tensor(float(step == 2))  # one step withheld
            opt.rounding_seed = step
            for group in opt.param_groups:
                group["lr"] = 1e-2 / (step + 1)  # a new learning rate each step recompiles nothing
            opt.step()
        return params, opt

    for dtype in (torch.float32, torch.bfloat16):
        (eager, e_opt), (compiled, c_opt) = run(False, dtype), run(True, dtype)
        for a, b in zip(eager, compiled):
            if dtype == torch.float32:
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
            else:  # the same random bits: equal, except where fp32 rounding moved a value across a bf16 cut
                assert (a != b).float().mean() < 0.02 and torch.allclose(a.float(), b.float(), rtol=2 ** -7)
            assert torch.allclose(e_opt.state[a]["exp_avg_sq"], c_opt.state[b]["exp_avg_sq"], rtol=1e-5)
            assert float(c_opt.state[b]["step"]) == 3


def test_compiled_update_bakes_in_no_hyperparameter():
    """A second optimizer with other betas and weight decay must not reuse the first one's
    numbers (torch.compile once baked `beta2 ** step` in with the first beta2)."""
    pytest.importorskip("torch._inductor")

    def first_step(betas, wd, compile):
        params = make_params(torch.float32, seed=4)
        opt = AdamWLowPrecision(params, lr=1e-2, betas=betas, weight_decay=wd, compile=compile)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        return params

    first_step((0.9, 0.95), 0.1, compile=True)
    for a, b in zip(first_step((0.8, 0.999), 0.0, compile=True), first_step((0.8, 0.999), 0.0, compile=False)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_found_inf_withholds_the_update():
    """The spike guard withholds a bad step's update on the device by setting `found_inf` on
    torch's fused AdamW (Trainer._train_step): with it at 1 the kernel leaves the weights, both
    moments and the step count as they were; at 0 it updates. This pins that behaviour of torch."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.randn(7)
    opt.step()  # the moments exist from here on
    before = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.randn(7)
    opt.found_inf = torch.ones(())
    opt.step()
    assert torch.equal(p, before)
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    opt.found_inf = torch.zeros(())
    opt.step()
    assert not torch.equal(p, before) and int(opt.state[p]["step"]) == int(state["step"]) + 1
