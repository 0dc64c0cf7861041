"""Engine parameters with the layer groups unstacked: one set of arrays per group.

Training keeps the groups' parameters stacked along a leading "layers" axis and scans over it.
At decode time (a few positions per call) that is slow on CPU: XLA slices each weight out of
the stack with a copy before every matmul (the dot needs a contiguous operand); in a profile of
the small config's micro-turn those copies outweighed the matmuls of a 1-position call (numbers:
`experiments/perf/README.md`, "Per-layer weights and row-chunk attention").
The engine therefore holds `EngineParams`: the model without its layer groups, plus one
(params, rest) pair per group sliced out of the stack once, when the parameters are loaded; the
step merges each group into its own module and runs them in an unrolled loop, so every matmul
reads its weight in place. `inference.layer_loop="scan"` keeps the stacked form (smaller
program, faster compile).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

LAYER_LOOPS = ("unrolled", "scan")


class EngineParams(NamedTuple):
    """outer: (params, rest) of the model with `backbone.groups` removed (unrolled) or the whole
    model (scan); groups: per layer group (params, rest), unstacked (empty for scan)."""

    outer: tuple
    groups: tuple


class EngineGraph(NamedTuple):
    """Static halves of `EngineParams`: graphdefs to merge the outer model and one group."""

    outer: nnx.GraphDef
    group: nnx.GraphDef | None


def check_layer_loop(name: str) -> str:
    if name not in LAYER_LOOPS:
        raise ValueError(f"inference.layer_loop={name!r}; expected one of {LAYER_LOOPS}")
    return name


def split_engine_params(graphdef: nnx.GraphDef, params, rest, layer_loop: str) -> tuple[EngineGraph, EngineParams]:
    """(graph, params) for the engine from a whole model's `nnx.split(model, nnx.Param, ...)`."""
    if check_layer_loop(layer_loop) == "scan":
        return EngineGraph(graphdef, None), EngineParams((params, rest), ())
    model = nnx.merge(graphdef, params, rest)  # a fresh module tree over the same arrays
    backbone = model.backbone
    group_def, gparams, grest = nnx.split(backbone.groups, nnx.Param, ...)
    groups = tuple(
        (jax.tree.map(lambda a, g=g: a[g], gparams), jax.tree.map(lambda a, g=g: a[g], grest))
        for g in range(backbone.num_groups)
    )
    backbone.groups = None
    outer_def, oparams, orest = nnx.split(model, nnx.Param, ...)
    return EngineGraph(outer_def, group_def), EngineParams((oparams, orest), groups)


def merge_engine_params(graph: EngineGraph, params: EngineParams):
    """(model, groups): the model to call embed / heads on, and the layer-group modules to run
    in order (None: scan the model's own stacked groups)."""
    model = nnx.merge(graph.outer, *params.outer)
    if graph.group is None:
        return model, None
    return model, [nnx.merge(graph.group, *g) for g in params.groups]
