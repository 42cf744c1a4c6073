"""Built-in sequence-model attention types over canvas real time: mamba, rwkv, hyena.

The sequence order is the canvas *real time* (a region with period ``p`` puts its ``k``-th frame
at ``t0 + k * p``, see :mod:`canvas_engineering.declare.topology`). Every type works on per-class key
summaries: ``u_c``, the mean of the key tokens of key class ``c`` (one region at one frame),
projected (projecting the mean equals averaging the projected tokens). Each query class ``a``
then runs its own sequence model over the key classes its row of the (Cq, Ck) weight table
allows, so the mask applies exactly per class: a blocked class is removed with ``torch.where``
or an exact 0 before anything mixes it, and a query never receives information from a key the
mask blocks. A query with no allowed (and, for the scans, no past) key class gets 0. Everything
is vectorised over (query class, key class); cost is linear in the number of positions plus a
term in the (small) number of classes.

* ``mamba`` and ``hyena`` are causal scans: a query reads only key classes at real times <= its
  own, in addition to the mask.
* ``rwkv`` is symmetric in ``|t_q - t_s|``: the mask alone decides what is read.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from canvas_engineering.plugins.attention.summaries import class_mean, mask_cached, option_field, zero_invalid
from torch import nn

from canvas_engineering.attention.attention_type import AttentionType
from canvas_engineering.compilation.attention_mask import AttentionMask, ClassView
from canvas_engineering.validation import check_int, check_positive_int

__all__ = ["HyenaAttention", "MambaAttention", "RWKVAttention"]


def _causal_visible(view: ClassView) -> torch.Tensor:
    """(Cq, Ck) bool: the class is allowed and not later (in real time) than the query class."""
    return view.allowed & (view.k_time[None, :] <= view.q_time[:, None])


# -- mamba ---------------------------------------------------------------------------


def _scan_index(view: ClassView) -> tuple:
    vis = _causal_visible(view)
    wv = torch.where(vis, view.weights, torch.zeros_like(view.weights))
    order = torch.argsort(view.k_time, stable=True)  # key classes in real-time order
    sorted_time = view.k_time[order]
    # index (into the time-sorted suffix sums, padded with a trailing 0) of the first class strictly later than s
    later = torch.searchsorted(sorted_time, view.k_time, right=True)
    return vis, wv, order, later, vis.any(1)[view.q_class]


class MambaAttention(AttentionType):
    """Selective state-space scan (Mamba-style, diagonal ``A``) over the key classes in real time.

    Operator, for a query of class ``a`` and the key classes ``s`` visible to it (allowed by the
    mask and at real time ``t_s <= t_a``), ``u_s = in_proj(mean of the keys of s)``::

        Delta_s = softplus(dt_proj(u_s))  (d_inner)      B_s = b_proj(u_s)  (d_state)
        h_a = sum_{s visible} W[a, s] * exp(A * sum_{r visible, t_r > t_s} Delta_r) * Delta_s * B_s * u_s
        out_q = out_proj( C(x_q) . h_{c(q)} ),   C = c_proj (from the query token)

    with ``A = -exp(a_log)`` (d_inner, d_state), negative. This is the zero-order-hold Mamba
    recurrence ``h <- exp(Delta A) h + Delta B u`` unrolled over the visible classes in
    real-time order; classes at the same real time do not decay each other. Mask: each query
    class scans only its visible classes (blocked classes are removed with ``torch.where``
    before the decays are summed), so a query reads keys the mask allows and only at real
    times <= its own. Weights are output scales on each class's contribution (the output
    projection has no bias: all weights 0.5 halve the output). ``beta`` is ignored. A query
    with nothing visible gets 0. Cost O(N d + Cq Ck d_inner d_state), memory
    (B, Cq, Ck, d_inner, d_state). Where every query sees a single real time, nothing decays
    and ``a_log`` gets no gradient (as in any scan of length one).

    Options:
        d_state: state size per channel (integer >= 1, default 8).
        d_inner: scan width (integer >= 1, default ``d_model``).
    """

    name = "mamba"
    score_based = False

    def __init__(
        self, d_model: int, n_heads: int, d_state: int = 8, d_inner: int | None = None, **config: Any
    ) -> None:
        super().__init__(d_model, n_heads, **config)
        check_positive_int(d_state, option_field(self.name, "d_state"))
        if d_inner is not None:
            check_int(d_inner, option_field(self.name, "d_inner"), minimum=1, rule="an integer >= 1 or None")
        di = d_model if d_inner is None else d_inner
        self.d_state, self.d_inner = d_state, di
        self.in_proj = nn.Linear(d_model, di)
        self.dt_proj = nn.Linear(di, di)
        self.b_proj = nn.Linear(di, d_state)
        self.c_proj = nn.Linear(d_model, d_state)
        self.out_proj = nn.Linear(di, d_model, bias=False)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        with torch.no_grad():  # Delta initially log-uniform in [1e-2, 1]: canvas sequences are short
            dt = torch.exp(torch.rand(di) * (math.log(1.0) - math.log(1e-2)) + math.log(1e-2))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        vis, wv, order, later, valid = mask_cached(mask, "scan", queries.device, _scan_index)
        u = self.in_proj(class_mean(keys, view))  # (B, Ck, di)
        delta = F.softplus(self.dt_proj(u))
        b_in = self.b_proj(u)  # (B, Ck, N)
        vis4 = vis[None, :, :, None]
        zero = u.new_zeros(())
        d_vis = torch.where(vis4, delta[:, None], zero)  # (B, Cq, Ck, di)
        # masked reverse cumulative sum over real time: sum of visible Delta_r with t_r > t_s
        suffix = d_vis.index_select(2, order).flip(2).cumsum(2).flip(2)
        suffix = F.pad(suffix, (0, 0, 0, 1))  # (B, Cq, Ck + 1, di), trailing 0 for "nothing later"
        later_sum = suffix.index_select(2, later)  # (B, Cq, Ck, di)
        a = -torch.exp(self.a_log.to(u.dtype))  # (di, N)
        decay = torch.exp(later_sum[..., None] * a)  # (B, Cq, Ck, di, N)
        x = torch.where(vis4, (delta * u)[:, None], zero) * wv.to(u.dtype)[None, :, :, None]
        h = torch.einsum("bcsin,bcsi,bsn->bcin", decay, x, b_in)  # (B, Cq, di, N)
        c_out = self.c_proj(queries)  # (B, nq, N)
        y = torch.einsum("bqin,bqn->bqi", h.index_select(1, view.q_class), c_out)
        return zero_invalid(self.out_proj(y), valid)


# -- rwkv ----------------------------------------------------------------------------


def _rwkv_index(view: ClassView) -> tuple:
    allowed = view.allowed
    weights = view.weights.double()
    bias = torch.where(allowed, weights.clamp(min=1e-300).log(), torch.zeros_like(weights))
    dt = (view.q_time[:, None] - view.k_time[None, :]).abs().double()
    return allowed, bias, dt, allowed.any(1)[view.q_class]


class RWKVAttention(AttentionType):
    """RWKV-style WKV mixing over the key classes with a learned per-channel decay in real time.

    Operator, for a query of class ``a`` and the allowed key classes ``s`` (``u_s`` = mean of
    the keys of ``s``, ``k_s = key(u_s)``, ``v_s = value(u_s)``, ``w = exp(time_decay) > 0``
    per channel, all per channel)::

        e_{a,s} = W[a, s] * exp(beta * (k_s - |t_a - t_s| * w))
        wkv_a = sum_s e_{a,s} v_s / sum_s e_{a,s}
        out_q = out_proj( sigmoid(receptance(x_q)) * wkv_{c(q)} )

    computed with a max-subtraction over the allowed classes only. Symmetric in
    ``|t_a - t_s|``: past and future frames decay alike, the mask alone decides what is read.
    Mask: blocked classes get ``-inf`` before the max and the exponential. Weights sit in
    numerator and denominator, i.e. act as log-weight biases on the WKV logits (``weight=0.5``
    halves a class's unnormalised mass), hence ``score_based = True``; ``beta`` multiplies those
    logits. A query with no allowed key gets 0. Cost O(N d + Cq Ck d). Where every query sees
    a single key class the normalisation cancels ``key`` and ``time_decay`` (no gradient).
    """

    name = "rwkv"
    score_based = True

    def __init__(self, d_model: int, n_heads: int, **config: Any) -> None:
        super().__init__(d_model, n_heads, **config)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.receptance = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.time_decay = nn.Parameter(torch.linspace(-3.0, 1.0, d_model))  # w = exp(.) in [0.05, 2.7]

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        allowed, bias, dt, valid = mask_cached(mask, "rwkv", queries.device, _rwkv_index)
        u = class_mean(keys, view)  # (B, Ck, d)
        k, v = self.key(u), self.value(u)
        w = torch.exp(self.time_decay.to(u.dtype))
        logits = float(beta) * (k[:, None] - dt.to(u.dtype)[None, :, :, None] * w) + bias.to(u.dtype)[None, :, :, None]
        logits = torch.where(allowed[None, :, :, None], logits, float("-inf"))  # (B, Cq, Ck, d)
        top = logits.detach().amax(2, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        e = torch.exp(logits - top)
        wkv = (e * v[:, None]).sum(2) / e.sum(2).clamp(min=torch.finfo(e.dtype).tiny)  # (B, Cq, d)
        r = torch.sigmoid(self.receptance(queries))
        out = self.out_proj(r * wkv.index_select(1, view.q_class))
        return zero_invalid(out, valid)


# -- hyena ---------------------------------------------------------------------------


def _hyena_index(view: ClassView) -> tuple:
    vis = _causal_visible(view)
    rows = torch.where(vis, view.weights, torch.zeros_like(view.weights))  # (Cq, Ck)
    patterns, q_pattern = torch.unique(rows.double(), dim=0, return_inverse=True)  # (P, Ck), (Cq,)
    t_real = int(max(view.q_time.max(), view.k_time.max())) + 1
    return patterns, q_pattern, t_real, vis.any(1)[view.q_class]


class HyenaAttention(AttentionType):
    """Hyena-style gated long convolution (FFT) over real time.

    Operator: ``u_s = in_proj(mean of the keys of key class s)``; an implicit causal filter
    ``h[tau, :] = MLP(sinusoidal(tau)) * exp(-softplus(decay) * tau)`` for ``tau = 0..T_real-1``
    (computed at forward, so any layout works; ``h[tau] = 0`` for ``tau < 0``). For every
    distinct row ``P`` of the effective class table (weight where the class is allowed and not
    later than the query class, else 0)::

        seq_P[t] = sum_{s: t_s = t} P[s] * u_s                      (T_real, d)
        y_P[t]   = sum_{tau >= 0} h[tau] * seq_P[t - tau]           (rfft/irfft, length 2 T_real)
        out_q    = out_proj( sigmoid(gate(x_q)) * y_{P(c(q))}[t_{c(q)}] )

    The per-region sequences of the description collapse into one per pattern because the
    filter is shared (convolution is linear). Distinct patterns are batched; no loop over
    patterns, classes or time. Mask: blocked classes (and classes later than the query, so the
    FFT's round-off cannot carry them) are zeroed before the convolution; a query reads only
    keys the mask allows at real times <= its own. Weights are output scales (the output
    projection has no bias: all weights 0.5 halve the output). ``beta`` is ignored. A query
    with nothing visible gets 0. Cost O(N d + P T log T d). The FFT runs in float32 (float64 for float64 inputs).

    Options:
        filter_hidden: width of the filter MLP (integer >= 1, default 32).
        n_freqs: sinusoidal frequencies of the filter's time encoding (integer >= 1, default 8).
    """

    name = "hyena"
    score_based = False

    def __init__(
        self, d_model: int, n_heads: int, filter_hidden: int = 32, n_freqs: int = 8, **config: Any
    ) -> None:
        super().__init__(d_model, n_heads, **config)
        check_positive_int(filter_hidden, option_field(self.name, "filter_hidden"))
        check_positive_int(n_freqs, option_field(self.name, "n_freqs"))
        self.n_freqs = n_freqs
        self.in_proj = nn.Linear(d_model, d_model)
        self.filter_mlp = nn.Sequential(
            nn.Linear(2 * n_freqs, filter_hidden), nn.SiLU(), nn.Linear(filter_hidden, d_model)
        )
        self.decay = nn.Parameter(torch.linspace(-4.0, 0.0, d_model))  # softplus: rates in [0.018, 0.69]
        self.gate = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def long_filter(self, t_real: int, device: torch.device) -> torch.Tensor:
        """Return the implicit filter ``h`` (t_real, d_model), causal (``tau >= 0``), at least float32."""
        w_dtype = self.filter_mlp[0].weight.dtype
        dtype = torch.promote_types(w_dtype, torch.float32)
        tau = torch.arange(t_real, device=device, dtype=dtype)
        freqs = torch.exp(-math.log(1e4) * torch.arange(self.n_freqs, device=device, dtype=dtype) / self.n_freqs)
        angles = tau[:, None] * freqs[None]
        feats = torch.cat([angles.sin(), angles.cos()], dim=1)
        h = self.filter_mlp(feats.to(w_dtype)).to(dtype)
        return h * torch.exp(-F.softplus(self.decay.to(dtype)) * tau[:, None])

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: AttentionMask, beta: float = 1.0
    ) -> torch.Tensor:
        """(B, nq, d) updates; see the class docstring."""
        view = mask.class_view(queries.device)
        patterns, q_pattern, t_real, valid = mask_cached(mask, "hyena", queries.device, _hyena_index)
        fft_dtype = torch.promote_types(queries.dtype, torch.float32)  # no half-precision FFT
        u = self.in_proj(class_mean(keys, view)).to(fft_dtype)  # (B, Ck, d)
        b, _, d = u.shape
        x = patterns.to(fft_dtype)[None, :, :, None] * u[:, None]  # (B, P, Ck, d); exact 0 for invisible classes
        seq = x.new_zeros(b, patterns.shape[0], t_real, d).index_add(2, view.k_time, x)  # (B, P, T, d)
        n = 2 * t_real
        h = self.long_filter(t_real, queries.device).to(fft_dtype)
        y = torch.fft.irfft(torch.fft.rfft(seq, n=n, dim=2) * torch.fft.rfft(h, n=n, dim=0), n=n, dim=2)[:, :, :t_real]
        y_cls = y[:, q_pattern, view.q_time]  # (B, Cq, d): each query class reads its pattern at its time
        y_q = y_cls.index_select(1, view.q_class).to(queries.dtype)
        out = self.out_proj(torch.sigmoid(self.gate(queries)) * y_q)
        return zero_invalid(out, valid)
