"""Trainable per-channel energy normalisation (PCEN), exact to the reference recursion, vectorised.

Reference (scripts 1-8): s = hop / (sample_rate * T) is a fixed buffer;
    M[..., 0] = E[..., 0];  M[..., t] = (1 - s) M[..., t-1] + s E[..., t]
    PCEN = (E / ((eps + M)^alpha' + denominator_eps) + delta')^r' - delta'^r'
with alpha' = clamp(alpha, .01, .99), delta' = |delta| + 1e-6, r' = clamp(r, .01, 1).

Speed (no Python loop over frames):
- the smoother is a two-level blocked linear scan written as two small matrix products; only
  non-negative powers of (1 - s) appear, so nothing overflows whatever the clip length;
- the rest is one autograd Function whose backward reduces straight to the three scalar
  gradients (four dot products); the forward runs rows in cache-sized chunks through reused
  buffers and keeps one tensor for the backward besides its output.
E comes from a no-grad mel spectrogram, so neither E nor M carries a gradient.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

DELTA_FLOOR = 1e-6        # delta' = |delta| + 1e-6 (reference)
SCAN_BLOCK = 16           # frames per scan block; ~sqrt(frames) keeps both matrix products small
CHUNK_ELEMENTS = 1 << 18  # elements per chunk buffer (1 MB of float32): the working set stays in cache
_UNDERFLOW = 1e-30        # decay factors below this become 0 (no denormal arithmetic in float32)


def smoother_coefficient(hop_length: int, sample_rate: int, time_constant: float) -> float:
    """The reference's fixed IIR coefficient s = hop / (sample_rate * T)."""
    return hop_length / (sample_rate * time_constant)


def constrained(alpha: Tensor, delta: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's constraints: alpha clamped to [.01, .99], delta -> |delta| + 1e-6, r clamped to [.01, 1]."""
    return alpha.clamp(0.01, 0.99), delta.abs() + DELTA_FLOOR, r.clamp(0.01, 1.0)


# ---------------------------------------------------------------------------------------------
# The smoother as a blocked scan
# ---------------------------------------------------------------------------------------------

def _decay_powers(decay: Tensor, exponents: Tensor) -> Tensor:
    """decay ** exponents (float64) where exponents >= 0, else 0; values below 1e-30 flushed to 0."""
    powers = decay ** exponents.clamp(min=0)
    return torch.where((exponents >= 0) & (powers >= _UNDERFLOW), powers, torch.zeros_like(powers))


def _padded_length(frames: int, block: int) -> int:
    return math.ceil(frames / block) * block


def _scan_matrices(s: Tensor, block: int, blocks: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The constant matrices of the blocked scan, built in float64 then cast to `dtype`.

    within [L, L]: s (1-s)^(j-k) for k <= j (zero-start scan inside a block);
    across [nb, nb]: (1-s)^(L(b-c)) for c <= b (block end states from the local block ends);
    start_decay [nb]: (1-s)^(L(b+1)) (initial state to block ends); ramp [L]: (1-s)^(j+1).
    """
    s = s.detach().to(torch.float64)
    decay = 1.0 - s
    steps = torch.arange(block, device=s.device, dtype=torch.float64)
    block_index = torch.arange(blocks, device=s.device, dtype=torch.float64)
    within = s * _decay_powers(decay, steps[None, :] - steps[:, None])
    across = _decay_powers(decay, block * (block_index[None, :] - block_index[:, None]))
    start_decay = _decay_powers(decay, block * (block_index + 1))
    ramp = _decay_powers(decay, steps + 1)
    return tuple(matrix.to(dtype) for matrix in (within, across, start_decay, ramp))


def _scan_padded(padded: Tensor, start: Tensor, matrices: tuple[Tensor, ...], out: Tensor | None = None) -> Tensor:
    """M for rows of zero-padded energy [N, nb * L] whose initial state is `start` [N, 1] (= E[:, 0])."""
    within, across, start_decay, ramp = matrices
    rows, blocks, block = padded.shape[0], across.shape[0], within.shape[0]
    out = torch.empty_like(padded) if out is None else out
    local = torch.mm(padded.view(rows * blocks, block), within, out=out.view(rows * blocks, block))
    local = local.view(rows, blocks, block)                                    # scan of each block from 0
    ends = torch.addmm(start * start_decay, local[:, :, -1], across)           # true state at each block end
    carried_in = torch.cat([start, ends[:, :-1]], dim=1)                       # state entering each block
    return local.addcmul_(carried_in[:, :, None], ramp).view(rows, blocks * block)


def _coefficient(s: Tensor | float, device: torch.device) -> Tensor:
    """s as a tensor; a Python float keeps its full (float64) precision."""
    return s.to(device) if isinstance(s, Tensor) else torch.tensor(s, dtype=torch.float64, device=device)


def smooth(energy: Tensor, s: Tensor | float, block: int = SCAN_BLOCK) -> Tensor:
    """The reference IIR smoother M of `energy` [..., T] along its last axis (same shape and dtype)."""
    frames = energy.shape[-1]
    flat = energy.reshape(-1, frames)
    padded_length = _padded_length(frames, block)
    matrices = _scan_matrices(_coefficient(s, energy.device), block, padded_length // block, energy.dtype)
    padded = nn.functional.pad(flat, (0, padded_length - frames))
    return _scan_padded(padded, flat[:, :1], matrices)[:, :frames].reshape(energy.shape)


# ---------------------------------------------------------------------------------------------
# The fused PCEN Function
# ---------------------------------------------------------------------------------------------

class _Workspace:
    """Reused chunk buffers [chunk_rows, padded_length], created with zero padding columns.

    Only the first T columns of `energy` are ever written, so its padding stays 0 and finite (a NaN
    there would leak through the block product); the scan is causal, so real frames never see it.
    """

    def __init__(self, like: Tensor, chunk_rows: int, padded_length: int, names: tuple[str, ...]) -> None:
        frames = like.shape[-1]
        for name in names:
            buffer = like.new_empty(chunk_rows, padded_length)
            buffer[:, frames:].zero_()
            setattr(self, name, buffer)


def _chunks(rows: int, chunk_rows: int) -> Iterator[tuple[slice, int]]:
    """(row slice, row count) pairs covering range(rows)."""
    for first in range(0, rows, chunk_rows):
        last = min(first + chunk_rows, rows)
        yield slice(first, last), last - first


def _shifted_ratio(flat: Tensor, work: _Workspace, count: int, matrices: tuple[Tensor, ...], alpha: Tensor,
                   delta: Tensor, eps: float, denominator_eps: float) -> tuple[Tensor, Tensor]:
    """For `count` rows of energy `flat` [count, T], in padded layout (work.energy stays E, zero-padded):
    u = E / ((eps + M)^alpha + deps) + delta in work.spare, and q = ln(eps + M) P / (P + deps) with
    P = (eps + M)^alpha in work.smoothed, so that d x / d alpha = -x q for x = u - delta."""
    frames = flat.shape[1]
    energy, smoothed, spare = work.energy[:count], work.smoothed[:count], work.spare[:count]
    energy[:, :frames].copy_(flat)
    log_m = _scan_padded(energy, flat[:, :1], matrices, out=smoothed).add_(eps).log_()
    if denominator_eps == 0:
        shifted = torch.mul(log_m, -alpha, out=spare).exp_().mul_(energy).add_(delta)
        return shifted, log_m
    denominator = torch.mul(log_m, alpha, out=spare).exp_().add_(denominator_eps)
    log_m.addcdiv_(log_m, denominator, value=-denominator_eps)                 # ln(eps+M) (1 - deps / D)
    shifted = torch.div(energy, denominator, out=spare).add_(delta)
    return shifted, log_m


class _PCEN(torch.autograd.Function):
    """PCEN of a constant energy with gradients for the constrained scalars alpha, delta, r only.

    The backward needs, per element, only u^r = y + delta^r (from the output y), ln u and
    q = ln(eps + M) P / (P + deps); the forward keeps q ([rows, T], like the output), so the backward
    is a few contiguous passes and four dot products, with no second scan.
    """

    @staticmethod
    def forward(ctx, energy: Tensor, s: Tensor, alpha: Tensor, delta: Tensor, r: Tensor, eps: float,
                denominator_eps: float, block: int, chunk_elements: int) -> Tensor:
        frames = energy.shape[-1]
        flat = energy.reshape(-1, frames)
        rows, padded_length = flat.shape[0], _padded_length(frames, block)
        if energy.device.type != "cpu":
            chunk_elements = rows * padded_length  # chunks only help CPU caches; on GPUs they add launches
        chunk_rows = max(1, min(rows, chunk_elements // padded_length))
        matrices = _scan_matrices(s, block, padded_length // block, energy.dtype)
        work = _Workspace(flat, chunk_rows, padded_length, ("energy", "smoothed", "spare"))
        output = flat.new_empty(rows, frames)
        log_terms = flat.new_empty(rows, frames) if any(ctx.needs_input_grad) else None
        offset = delta ** r
        for part, count in _chunks(rows, chunk_rows):
            shifted, q = _shifted_ratio(flat[part], work, count, matrices, alpha, delta, eps, denominator_eps)
            if log_terms is not None:
                log_terms[part] = q[:, :frames]
            powered = torch.log(shifted, out=q).mul_(r).exp_()                      # u^r
            torch.sub(powered[:, :frames], offset, out=output[part])
        result = output.view(energy.shape)
        ctx.save_for_backward(result, log_terms, delta, r)
        ctx.chunk_rows = chunk_rows
        return result

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        # With x = u - delta and d x / d alpha = -x q, the gradients need four sums over elements:
        # g u^r ln u, g u^r q, g u^(r-1) and g u^(r-1) q (x u^(r-1) = u^r - delta u^(r-1)).
        result, log_terms, delta, r = ctx.saved_tensors
        rows, frames = log_terms.shape
        output, grad = result.reshape(rows, frames), grad_output.reshape(rows, frames)
        chunk_rows = ctx.chunk_rows
        powered_buffer, weighted_buffer = output.new_empty(chunk_rows, frames), output.new_empty(chunk_rows, frames)
        offset = delta ** r
        partial_sums = []
        for part, count in _chunks(rows, chunk_rows):
            powered = torch.add(output[part], offset, out=powered_buffer[:count]).view(-1)       # u^r
            weighted = torch.mul(grad[part], powered_buffer[:count], out=weighted_buffer[:count]).view(-1)
            q = log_terms[part].view(-1)
            log_powered = powered.log_()                                                          # r ln u
            upper = (torch.dot(weighted, log_powered), torch.dot(weighted, q))
            weighted.mul_(log_powered.mul_(-1.0 / r).exp_())                                      # g u^(r-1)
            partial_sums.append(torch.stack([*upper, weighted.sum(), torch.dot(weighted, q)]))
        sum_log_r, sum_q_upper, sum_lower, sum_q_lower = torch.stack(partial_sums).sum(dim=0)
        grad_total = grad.sum()
        grad_r = sum_log_r / r - grad_total * offset * torch.log(delta)
        grad_delta = r * (sum_lower - grad_total * delta ** (r - 1))
        grad_alpha = -r * (sum_q_upper - delta * sum_q_lower)
        return None, None, grad_alpha, grad_delta, grad_r, None, None, None, None


def pcen(energy: Tensor, s: Tensor | float, alpha: Tensor, delta: Tensor, r: Tensor, eps: float = 1e-6,
         denominator_eps: float = 0.0, block: int = SCAN_BLOCK, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """PCEN of `energy` [..., T] (a constant: no gradient flows to it) for the raw parameters alpha, delta, r.

    The constraints are applied here (autograd differentiates them); the rest is one fused Function.
    """
    if energy.requires_grad:
        raise ValueError("PCEN treats the mel energy as a constant: compute it under torch.no_grad()")
    alpha, delta, r = constrained(alpha, delta, r)
    dtype = energy.dtype
    return _PCEN.apply(energy.contiguous(), _coefficient(s, energy.device), alpha.to(dtype),
                       delta.to(dtype), r.to(dtype), eps, denominator_eps, block, chunk_elements)


def pcen_loop(energy: Tensor, s: float, alpha: Tensor, delta: Tensor, r: Tensor, eps: float = 1e-6,
              denominator_eps: float = 0.0) -> Tensor:
    """The reference PCEN written plainly (a Python loop over frames, autograd for the rest).

    The ground truth for tests and the benchmark; the model uses TrainablePCEN.
    """
    frames = [energy[..., 0]]
    for t in range(1, energy.shape[-1]):
        frames.append((1 - s) * frames[-1] + s * energy[..., t])
    smoothed = torch.stack(frames, dim=-1)
    alpha_c, delta_c, r_c = constrained(alpha, delta, r)
    return (energy / ((eps + smoothed) ** alpha_c + denominator_eps) + delta_c) ** r_c - delta_c ** r_c


def smoother_matrix(s: Tensor | float, frames: int) -> Tensor:
    """The smoother as one matrix W [T, T] (float32) with M = E @ W, for fixed-length inference graphs.

    W[0, t] = (1 - s)^t carries the initial state M[0] = E[0]; W[k, t] = s (1 - s)^(t - k) for
    1 <= k <= t. Built in float64 from tensor ops only (no .item(): exporters trace it as constants);
    tiny powers are flushed to 0 as in the blocked scan.
    """
    s = torch.as_tensor(s, dtype=torch.float64).detach()  # a Python float keeps its float64 precision
    decay = 1.0 - s
    steps = torch.arange(frames, dtype=torch.float64, device=s.device)
    gaps = steps[None, :] - steps[:, None]                                   # t - k
    later_rows = s * _decay_powers(decay, gaps[1:])
    return torch.cat([_decay_powers(decay, steps)[None, :], later_rows]).to(torch.float32)


def pcen_plain(energy: Tensor, matrix: Tensor, alpha: Tensor, delta: Tensor, r: Tensor, eps: float,
               denominator_eps: float) -> Tensor:
    """PCEN in plain tensor ops (one matmul for the smoother): the inference path that exporters trace.

    Same values as `pcen` to float32 rounding; no gradient tricks, no reused buffers.
    """
    smoothed = torch.matmul(energy, matrix)
    alpha, delta, r = constrained(alpha, delta, r)
    return (energy / ((eps + smoothed) ** alpha + denominator_eps) + delta) ** r - delta ** r


class TrainablePCEN(nn.Module):
    """PCEN with shared trainable scalars alpha, delta, r and a fixed smoother buffer s (3 parameters)."""

    def __init__(self, s: float, alpha: float = 0.98, delta: float = 2.0, r: float = 0.5, eps: float = 1e-6,
                 denominator_eps: float = 0.0) -> None:
        super().__init__()
        if not 0.0 < s <= 1.0:
            raise ValueError(f"PCEN smoother coefficient s must be in (0, 1], got {s}; check hop, sample rate and T")
        self.register_buffer("s", torch.tensor(float(s)))
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.delta = nn.Parameter(torch.tensor(float(delta)))
        self.r = nn.Parameter(torch.tensor(float(r)))
        self.eps = eps
        self.denominator_eps = denominator_eps

        # "fused": the vectorised kernel (training, inference); "plain": trace-friendly tensor ops (ONNX
        # export, core/model/ensemble.py); "loop": the reference's frame loop (benchmarks/epoch.py).
        self.ops = "fused"

    def forward(self, energy: Tensor) -> Tensor:
        """energy: non-negative mel magnitudes [..., F, T] without grad. Returns PCEN of the same shape."""
        if self.ops == "fused":
            return pcen(energy, self.s, self.alpha, self.delta, self.r, self.eps, self.denominator_eps)
        if self.ops == "plain":
            matrix = smoother_matrix(self.s, energy.shape[-1])
            return pcen_plain(energy, matrix, self.alpha, self.delta, self.r, self.eps, self.denominator_eps)
        if self.ops == "loop":
            return pcen_loop(energy, float(self.s), self.alpha, self.delta, self.r, self.eps, self.denominator_eps)
        raise ValueError(f"TrainablePCEN.ops is {self.ops!r}; use 'fused', 'plain' or 'loop'")

    def extra_repr(self) -> str:
        return f"s={float(self.s):.6g}, eps={self.eps:g}, denominator_eps={self.denominator_eps:g}"
