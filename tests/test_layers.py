"""Memory-lean training paths compute the gradients of the plain formulas."""

import torch
import torch.nn.functional as F

from blt_hf.layers import BLTMLP, BLTRMSNorm, recompute_in_backward


def test_lean_rmsnorm_backward_matches_autograd_of_the_formula():
    torch.manual_seed(0)
    norm = BLTRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.add_(torch.randn(16))
    x = torch.randn(3, 5, 16, requires_grad=True)
    upstream = torch.randn(3, 5, 16)
    (norm(x) * upstream).sum().backward()
    x_ref, w_ref = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    reference = w_ref * x_ref * torch.rsqrt(x_ref.pow(2).mean(-1, keepdim=True) + 1e-5)
    (reference * upstream.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(norm.weight.grad.double(), w_ref.grad, atol=1e-5, rtol=1e-4)


def test_lean_swiglu_backward_matches_autograd_of_the_formula():
    torch.manual_seed(1)
    mlp = BLTMLP(8, 24)
    x = torch.randn(2, 7, 8, requires_grad=True)
    upstream = torch.randn(2, 7, 8)
    (mlp(x) * upstream).sum().backward()
    grads = [x.grad] + [m.weight.grad for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    leaves = [t.detach().double().requires_grad_() for t in
              (x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)]
    xr, wg, wu, wd = leaves
    reference = F.linear(F.silu(F.linear(xr, wg)) * F.linear(xr, wu), wd)
    (reference * upstream.double()).sum().backward()
    for got, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(got.double(), leaf.grad, atol=1e-5, rtol=1e-4)


def test_recompute_in_backward_gives_the_same_gradients():
    torch.manual_seed(2)
    a = torch.randn(4, 6, requires_grad=True)

    def core(t):
        return torch.softmax(t @ t.T, -1) @ t

    core(a).square().sum().backward()
    plain = a.grad.clone()
    a.grad = None
    recompute_in_backward(core, a).square().sum().backward()
    torch.testing.assert_close(a.grad, plain)
