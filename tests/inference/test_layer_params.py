"""`layer_params`: the engine's per-layer parameters are the training stack's slices, merge back
into the model's own modules, and a checkpoint of another model is refused by `load_params`."""

import jax
import numpy as np
import pytest
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.layer_params import merge_engine_params, split_engine_params
from interaction_jax.model.interaction_model import InteractionModel


@pytest.fixture(scope="module")
def model():
    return InteractionModel(load_config(config_path("tiny.py")), rngs=nnx.Rngs(0))


def test_unrolled_groups_are_the_stacks_slices(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    graph, ep = split_engine_params(graphdef, params, rest, "unrolled")
    stacked = nnx.state(model.backbone.groups, nnx.Param)
    n = model.backbone.num_groups
    assert len(ep.groups) == n > 1
    for g, (gp, _) in enumerate(ep.groups):
        want = jax.tree.leaves(stacked)
        got = jax.tree.leaves(gp)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[g])
    # the outer model holds everything but the groups: its leaves + the groups' = the whole model's
    n_outer = len(jax.tree.leaves(ep.outer[0]))
    assert n_outer + len(jax.tree.leaves(stacked)) == len(jax.tree.leaves(params))
    outer, groups = merge_engine_params(graph, ep)
    assert outer.backbone.groups is None and len(groups) == n
    np.testing.assert_array_equal(np.asarray(groups[1].blocks[0].attn_norm.scale[...]),
                                  np.asarray(model.backbone.groups.blocks[0].attn_norm.scale[...])[1])


def test_scan_keeps_the_whole_model(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    graph, ep = split_engine_params(graphdef, params, rest, "scan")
    merged, groups = merge_engine_params(graph, ep)
    assert groups is None and ep.groups == ()
    assert merged.backbone.groups is not None


def test_load_params_of_another_model_is_a_clear_error(model):
    c = load_config(config_path("tiny.py"), ["inference.slots=1"])
    engine = StreamEngine(c, model)
    other = load_config(config_path("tiny.py"), ["model.num_layers=4"])
    _, params, rest = nnx.split(InteractionModel(other, rngs=nnx.Rngs(1)), nnx.Param, ...)
    with pytest.raises(ValueError, match="do not fit this engine's model"):
        engine.load_params(params, rest)
    # the same structure loads, and its slices replace the old ones
    _, params2, rest2 = nnx.split(InteractionModel(c, rngs=nnx.Rngs(5)), nnx.Param, ...)
    engine.load_params(params2, rest2)
    first = jax.tree.leaves(engine.params.groups[0][0])[0]
    want = jax.tree.leaves(nnx.state(nnx.merge(*nnx.split(InteractionModel(c, rngs=nnx.Rngs(5)))).backbone.groups,
                                     nnx.Param))[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(want)[0])
