#!/usr/bin/env python3
"""Independent float64 GPTQ for lowbit's tests (tests/nn/test_quantizer.cpp, GptqGolden).

Written from the GPTQ paper (Frantar et al. 2022, eq. 2-3 and Algorithm 1) and the reference
fasterquant's conventions, sharing no code with lowbit. Deliberately NOT the same formulation as
lowbit's: no Cholesky factor and no lazy block updates. Each step quantizes one column, spreads
its error with the current inverse Hessian,  W[:, j:] -= (w - q) / Hinv[j, j] * Hinv[j, j:],  and
then removes column j from Hinv by Gaussian elimination (OBS). In exact arithmetic this equals the
Cholesky / lazy-batch form; in float64 the two agree to ~1e-12, far below any rounding decision.

Conventions shared with lowbit (see src/quant/gptq.cpp):
  - dead columns (H_jj == 0): H_jj = 1, W[:, j] = 0; damping 1% of mean(diag(H));
  - act_order: stable sort of diag(H), descending;
  - scale groups are ORIGINAL columns; dynamic groups are fitted from the current (error-updated)
    weights when their first column in processing order is reached; static groups up front.
Quantizers, written from the format definitions (src/format/scaling.h), on float32 values:
  int<b> sym:  scale = fp16(absmax / (2^(b-1) - 1)), q = clamp(round(x / scale), -qmax, qmax)
  int<b> asym: lo = min(x, 0), hi = max(x, 0), scale = fp16((hi - lo) / (2^b - 1)),
               zero = clamp(round(-lo / scale), 0, 2^b - 1), q = clamp(round(x / scale) + zero)
  fp4_e2m1:    scale = fp16(absmax / 6), nearest of +-{0, .5, 1, 1.5, 2, 3, 4, 6}, ties to the
               even code (code = index in that list)
  round() is half-to-even; a zero scale quantizes everything to 0.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/gptq_reference.py
Fixture layout (little-endian): b"LBGPTQ01", u32 rows, u32 cols, u32 n, n bytes of JSON
(spec, damp, block_size, act_order, static_groups), f64 W[rows*cols], f64 H[cols*cols],
f32 expected dequantized W[rows*cols].
"""
import json, os, struct
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "gptq")

FP4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def fp16(x):
    s = x.float().half().float()
    assert torch.isfinite(s).all()
    return s


class Quantizer:
    """Per-row params of one scale group, fitted from float32 values x [rows, n]."""

    def __init__(self, kind, bits, asym, x):
        self.kind, self.bits, self.asym = kind, bits, asym
        x = x.float()
        zero32 = torch.zeros(x.shape[0])
        if kind == "int" and asym:
            self.maxq = float(2**bits - 1)
            lo = torch.minimum(x.min(1).values, zero32)
            hi = torch.maximum(x.max(1).values, zero32)
            self.scale = fp16((hi - lo) / self.maxq)
            safe = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
            z = torch.clamp(torch.round(-lo / safe), 0, self.maxq)
            self.zero = torch.where(self.scale > 0, z, zero32)
        else:
            top = float(2 ** (bits - 1) - 1) if kind == "int" else 6.0
            self.maxq = top
            self.scale = fp16(x.abs().max(1).values / top)

    def __call__(self, w):
        """Dequantized float32 values of the float32 column w [rows]."""
        w = w.float()
        s = self.scale
        t = torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(w))
        if self.kind == "int" and self.asym:
            q = torch.clamp(torch.round(t) + self.zero, 0, self.maxq)
            return (q - self.zero) * s
        if self.kind == "int":
            return torch.clamp(torch.round(t), -self.maxq, self.maxq) * s
        a = t.abs().double()
        d = (a[:, None] - FP4[None, :]).abs()
        best = d.min(1, keepdim=True).values
        idx = torch.arange(8).expand_as(d)
        # Among the (at most two) nearest values take the even index: a tie is between neighbours.
        cand = torch.where(d == best, idx, torch.full_like(idx, 99))
        even = torch.where(cand % 2 == 0, cand, torch.full_like(cand, 99)).min(1).values
        pick = torch.where(even < 99, even, cand.min(1).values)
        v = FP4[pick].float()
        return torch.where(t < 0, -v, v) * s


def parse(spec):
    """'int4:g32:asym' -> (kind, bits, asym, group or None for channel)."""
    parts = spec.split(":")
    kind, bits = ("fp4", 4) if parts[0] == "fp4_e2m1" else ("int", int(parts[0][3:]))
    group = int(parts[1][1:]) if parts[1].startswith("g") else None
    return kind, bits, "asym" in parts, group


def gptq(W, H, spec, damp=0.01, act_order=False, static_groups=False):
    kind, bits, asym, group = parse(spec)
    rows, cols = W.shape
    W, H = W.clone(), H.clone()
    g = group or cols
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    ngroups = (cols + g - 1) // g
    members = [list(range(k * g, min(cols, (k + 1) * g))) for k in range(ngroups)]
    quant = [None] * ngroups
    if static_groups or ngroups == 1:
        quant = [Quantizer(kind, bits, asym, W[:, m]) for m in members]
    perm = torch.arange(cols)
    if act_order:
        perm = torch.sort(torch.diag(H), descending=True, stable=True).indices
    W, H = W[:, perm], H[perm][:, perm]
    pos = torch.argsort(perm)
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for j in range(cols):
        k = int(perm[j]) // g
        if quant[k] is None:  # first column of this group: fit on the current weights
            quant[k] = Quantizer(kind, bits, asym, W[:, pos[members[k]]])
        w = W[:, j]
        q = quant[k](w).double()
        Q[:, j] = q
        d = Hinv[j, j]
        W[:, j:] -= torch.outer((w - q) / d, Hinv[j, j:])
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / d  # drop column j (OBS)
    return Q[:, pos]


def case(name, rows, cols, spec, seed, act_order=False, static_groups=False, block_size=128, dead=()):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs: tokens through a random mixing matrix with a decaying spectrum.
    n = 2 * cols
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64)
    mix *= torch.logspace(0, -2, cols, dtype=torch.float64)[:, None]
    X = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix + 0.1 * torch.randn(n, cols, generator=g, dtype=torch.float64)
    X[:, list(dead)] = 0
    H = 2.0 / n * X.T @ X
    W = (torch.randn(rows, cols, generator=g) * 0.05 * torch.logspace(-1, 1, rows)[:, None]).double()
    W = W.float().double()  # weights are float32 values
    Q = gptq(W, H, spec, act_order=act_order, static_groups=static_groups)
    meta = {"spec": spec, "damp": 0.01, "block_size": block_size, "act_order": act_order,
            "static_groups": static_groups}
    blob = json.dumps(meta).encode()
    with open(os.path.join(OUT, name + ".bin"), "wb") as f:
        f.write(b"LBGPTQ01" + struct.pack("<III", rows, cols, len(blob)) + blob)
        f.write(W.numpy().astype("<f8").tobytes())
        f.write(H.numpy().astype("<f8").tobytes())
        f.write(Q.float().numpy().astype("<f4").tobytes())
    dW = Q - W
    err = torch.trace(dW @ H @ dW.T).item()
    print(f"{name:28s} {spec:16s} {rows}x{cols} act_order={act_order} static={static_groups} "
          f"block={block_size} output error {err:.6g}")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    case("int4_channel", 32, 160, "int4:channel:sym", 1)
    case("int4_g32_asym", 32, 172, "int4:g32:asym", 2, dead=(5, 77))
    case("int3_g64_actorder", 32, 192, "int3:g64:sym", 3, act_order=True)
    case("int4_g32_asym_static", 32, 160, "int4:g32:asym", 4, act_order=True, static_groups=True)
    case("int4_g48_block32", 24, 120, "int4:g48:asym", 5, block_size=32, dead=(0, 119))
    case("int4_g48_block32_actorder", 24, 120, "int4:g48:sym", 6, act_order=True, block_size=32)
    case("fp4_g32", 32, 160, "fp4_e2m1:g32", 7)
    case("fp4_channel_actorder", 24, 172, "fp4_e2m1:channel", 8, act_order=True, dead=(3,))
