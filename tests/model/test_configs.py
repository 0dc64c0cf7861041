"""Every config builds and runs a forward on CPU (tiny for real, the rest abstractly), and the
paper-scale config has the published size (276B total / 12B active within 3%)."""

import glob
import os

import jax
import numpy as np
import pytest
from conftest import CONFIGS, config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.model.interaction_model import InteractionModel, dummy_batch, forward
from interaction_jax.summary import count_params, format_table, param_rows

ALL_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(str(CONFIGS / "*.py")))


def _abstract_forward(c, batch_size=1, turns=1):
    batch = dummy_batch(c, batch_size, turns)

    def run(batch):
        graphdef, state = nnx.split(InteractionModel(c, rngs=nnx.Rngs(0)))
        return forward(graphdef, state, batch, jax.random.key(0))

    return jax.eval_shape(run, batch)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_and_forward_shapes(name):
    c = load_config(config_path(name))
    loss, metrics = _abstract_forward(c)
    assert loss.shape == () and metrics["text_loss"].shape == ()


def test_tiny_real_forward():
    """A real (not abstract) forward of the tiny config, under jit, on CPU."""
    c = load_config(config_path("tiny.py"))
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, b: m(b))(model, dummy_batch(c, 1, 1))
    assert out["text_logits"].shape[-1] == 272 and np.all(np.isfinite(out["hidden"]))


def test_paper_scale_counts():
    total, active = count_params(load_config(config_path("tml_interaction_small.py")))
    assert abs(total / 276e9 - 1) < 0.03, total
    assert abs(active / 12e9 - 1) < 0.03, active


def test_small_configs_sizes_and_active_convention():
    dense_total, dense_active = count_params(load_config(config_path("small.py")))
    assert 50e6 <= dense_total <= 100e6 and dense_active == dense_total
    moe = load_config(config_path("small_moe.py"))
    moe_total, moe_active = count_params(moe)
    assert moe.model.moe.num_experts >= 8
    assert abs(moe_active / dense_active - 1) < 0.03  # same active size
    # Routed experts count top_k / num_experts; everything else counts fully.
    m = moe.model
    routed = m.num_layers * m.moe.num_experts * 3 * m.d_model * m.moe.expert_ffn_dim
    assert moe_total - moe_active == routed * (1 - m.moe.top_k / m.moe.num_experts)


def test_summary_table_ends_with_counts():
    c = load_config(config_path("tiny.py"))
    text = format_table(param_rows(c))
    total, active = count_params(c)
    assert text.splitlines()[-1] == f"total_params={total} active_params={active}"
    assert "backbone/groups/blocks/0/attn" in text and "embed/hmlp" in text
