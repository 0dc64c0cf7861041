"""The machine's floor of a model call, from two probes: max(bytes read / bandwidth, FLOPs / peak).

A call has to read its weights and the KV rows it attends to from memory at least once, and do
its multiply-adds at least once; at best the two overlap completely. `decode_floor.py` measures
the two rates on the device (`bandwidth_probe`, `compute_probe`) and applies them to every call
of the micro-turn. What is counted, float32 (4 bytes a number):

* weights: every backbone matmul (per layer q, k, v, o, gate, up, down; `backbone_shapes`) and
  the text head (d_model x vocab, applied to every row), read once per call; n rows through an
  [in, out] matrix are 2·n·in·out FLOPs;
* KV cache: the K and V rows the call attends to (the cache before it plus its own rows), read
  once; QK^T and PV are 4·heads·head_dim FLOPs per (query, key) pair, causal within the call;
* flow ODE, per audio position: per velocity evaluation (the ODE steps, two per midpoint step)
  the flow head's field weights (in, time, per layer up and down, out) on one row, and its
  conditioning projection once.

Left out, so a real call can only be slower: embeddings and the video patch encoder, norms,
activations, softmax, sampling, and the writes of new KV rows and activations. Every call reads
from memory, as if nothing stayed in cache between calls: true of a model much larger than the
caches (small: 220 MB of backbone weights), not of tiny, whose floor is therefore not a bound.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

F32 = 4  # bytes


@dataclass(frozen=True)
class Work:
    """Bytes a call must read and FLOPs it must do."""

    bytes: float
    flops: float

    def __add__(self, other: Work) -> Work:
        return Work(self.bytes + other.bytes, self.flops + other.flops)

    def __mul__(self, k: float) -> Work:
        return Work(self.bytes * k, self.flops * k)

    def ms(self, gb_s: float, gflop_s: float) -> float:
        """Least time (ms) at `gb_s` GB/s memory read and `gflop_s` GFLOP/s."""
        return 1e3 * max(self.bytes / (gb_s * 1e9), self.flops / (gflop_s * 1e9))

    def bound(self, gb_s: float, gflop_s: float) -> str:
        return "bandwidth" if self.bytes / gb_s >= self.flops / gflop_s else "compute"


def matmuls(shapes: list[tuple[int, int]], rows: int) -> Work:
    """`rows` rows through every [in, out] matrix of `shapes`, float32 weights read once."""
    numbers = sum(i * o for i, o in shapes)
    return Work(F32 * numbers, 2.0 * rows * numbers)


def attention(layers: int, heads: int, kv_heads: int, head_dim: int, rows: int, cached: int) -> Work:
    """A call of `rows` queries over `cached` earlier positions plus its own (causal), every layer."""
    keys = cached + rows
    pairs = rows * cached + rows * (rows + 1) // 2
    return Work(F32 * layers * 2 * kv_heads * head_dim * keys, 4.0 * layers * heads * head_dim * pairs)


def backbone_shapes(m) -> list[tuple[int, int]]:
    """(in, out) of every backbone matmul, layer by layer (dense layers: q, k, v, o, gate, up, down)."""
    d, hd = int(m.d_model), int(m.head_dim)
    per_layer = [(d, int(m.num_heads) * hd), (d, int(m.num_kv_heads) * hd), (d, int(m.num_kv_heads) * hd),
                 (int(m.num_heads) * hd, d), (d, int(m.ffn_dim)), (d, int(m.ffn_dim)), (int(m.ffn_dim), d)]
    return per_layer * int(m.num_layers)


def model_call(m, vocab: int, rows: int, cached: int) -> Work:
    """One engine call: backbone matmuls + text head on `rows` rows, attention over `cached` + `rows`."""
    return (matmuls(backbone_shapes(m) + [(int(m.d_model), vocab)], rows)
            + attention(int(m.num_layers), int(m.num_heads), int(m.num_kv_heads), int(m.head_dim), rows, cached))


def flow_ode(d_model: int, frames: int, n_mels: int, hidden: int, layers: int, steps: int, solver: str) -> Work:
    """The flow-head ODE of one audio position (the field as in `model/flow.py`)."""
    fm = frames * n_mels
    field = [(fm, hidden), (hidden, hidden)] + [(hidden, 2 * hidden), (2 * hidden, hidden)] * layers + [(hidden, fm)]
    evals = steps * (2 if solver == "midpoint" else 1)
    return matmuls([(d_model, hidden)], 1) + matmuls(field, 1) * evals


# ---- probes (jitted XLA on the default device) ---------------------------------------------------

def _times_ms(f, *args, iters: int) -> list[float]:
    import jax

    jax.block_until_ready(f(*args))  # compile
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bandwidth_probe(mb: int, iters: int) -> dict:
    """Read GB/s of a float32 array of `mb` MiB reduced by XLA (a full sum and a column sum; the faster)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((mb * 2**20 // (F32 * 1024), 1024), jnp.float32)
    best = None
    for name, f in (("sum", jax.jit(jnp.sum)), ("column sum", jax.jit(lambda a: jnp.sum(a, axis=0)))):
        t = _times_ms(f, x, iters=iters)
        r = dict(mb=mb, how=name, best_gb_s=x.nbytes / min(t) / 1e6, median_gb_s=x.nbytes / statistics.median(t) / 1e6)
        best = r if best is None or r["best_gb_s"] > best["best_gb_s"] else best
    return best


def compute_probe(n: int, iters: int) -> dict:
    """GFLOP/s of a float32 [n, n] @ [n, n] matmul (2·n³ FLOPs)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    t = _times_ms(jax.jit(jnp.matmul), a, a, iters=iters)
    flops = 2.0 * n**3
    return dict(n=n, best_gflop_s=flops / min(t) / 1e6, median_gflop_s=flops / statistics.median(t) / 1e6)
