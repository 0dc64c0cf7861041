"""The user-text-stream auxiliary loss (ablation switch) equals cross-entropy on the next user-text slot."""

import jax
import numpy as np
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.model.interaction_model import InteractionModel, dummy_batch, forward, user_text_pairs
from interaction_jax.streams.layout import Kind, StreamLayout


def test_user_text_loss_matches_direct_cross_entropy():
    cfg = load_config(config_path("tiny.py"), ["model.num_layers=1"])
    layout = StreamLayout.from_config(cfg)
    model = InteractionModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = dummy_batch(cfg, 2, 3)
    src, dst = user_text_pairs(layout, 3)
    kinds = np.asarray(batch["kinds"][0])
    assert (kinds[src] == Kind.USER_TEXT).all() and (kinds[dst] == Kind.USER_TEXT).all() and (dst > src).all()
    rng = jax.random.key(0)
    base, _ = forward(graphdef, params, batch, rng, rest, weights={"user_text": 0.0}, user_text_pairs=(src, dst))
    loss, m = forward(graphdef, params, batch, rng, rest, weights={"user_text": 0.5}, user_text_pairs=(src, dst))
    logits = np.asarray(model(batch)["text_logits"], np.float64)[:, src]
    targets = np.asarray(batch["token_ids"])[:, dst]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True
    )
    ce = -np.take_along_axis(logp, targets[..., None], -1).mean()
    np.testing.assert_allclose(float(m["user_text_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(loss) - float(base), 0.5 * ce, rtol=1e-4)


def test_user_speech_loss_is_cross_entropy_at_user_audio_positions():
    cfg = load_config(config_path("tiny.py"), ["model.num_layers=1"])
    model = InteractionModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = dict(dummy_batch(cfg, 2, 3))
    valid = np.ones(batch["valid"].shape, bool)
    valid[:, -5:] = False  # padding at the end takes no loss
    batch["valid"] = valid
    rng = jax.random.key(0)
    base, _ = forward(graphdef, params, batch, rng, rest, weights={"user_speech": 0.0})
    loss, m = forward(graphdef, params, batch, rng, rest, weights={"user_speech": 0.25})
    sel = (np.asarray(batch["kinds"]) == int(Kind.USER_AUDIO)) & valid
    logits = np.asarray(model(batch)["text_logits"], np.float64)[sel]
    targets = np.asarray(batch["user_speech_targets"])[sel]
    mx = logits.max(-1, keepdims=True)
    logp = logits - mx - np.log(np.exp(logits - mx).sum(-1, keepdims=True))
    ce = -logp[np.arange(len(targets)), targets].mean()
    np.testing.assert_allclose(float(m["user_speech_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(loss) - float(base), 0.25 * ce, rtol=1e-4)
    assert "user_speech_loss" not in forward(graphdef, params, batch, rng, rest)[1]


def test_text_nothing_weight_reweights_silence_targets_in_the_text_loss():
    from interaction_jax.streams.tokenizer import Control

    cfg = load_config(config_path("tiny.py"), ["model.num_layers=1"])
    model = InteractionModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = dict(dummy_batch(cfg, 2, 3))
    tgt = np.asarray(batch["text_targets"]).copy()
    mask = np.asarray(batch["text_loss_mask"], np.float64)
    tgt[:, ::3] = int(Control.NOTHING)
    batch["text_targets"] = tgt
    rng = jax.random.key(0)
    _, m1 = forward(graphdef, params, batch, rng, rest)
    _, m2 = forward(graphdef, params, batch, rng, rest, weights={"text_nothing": 0.2})
    logits = np.asarray(model(batch)["text_logits"], np.float64)
    mx = logits.max(-1, keepdims=True)
    logp = logits - mx - np.log(np.exp(logits - mx).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    wts = mask * np.where(tgt == int(Control.NOTHING), 0.2, 1.0)
    np.testing.assert_allclose(float(m1["text_loss"]), (ce * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(m2["text_loss"]), (ce * wts).sum() / wts.sum(), rtol=1e-5)
    assert float(m1["text_accuracy"]) == float(m2["text_accuracy"])  # accuracy stays unweighted


def test_user_speech_word_accuracy_counts_word_targets_only():
    from interaction_jax.streams.tokenizer import Control

    cfg = load_config(config_path("tiny.py"), ["model.num_layers=1"])
    model = InteractionModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = dict(dummy_batch(cfg, 2, 3))
    sel = (np.asarray(batch["kinds"]) == int(Kind.USER_AUDIO)) & np.asarray(batch["valid"], bool)
    logits = np.asarray(model(batch)["text_logits"])
    pred, vocab = logits.argmax(-1), logits.shape[-1]
    targets = np.asarray(batch["user_speech_targets"]).copy()
    b, p = np.nonzero(sel)
    # of the USER_AUDIO positions: a third NOTHING, a third the model's own argmax (hits), a third misses
    nothing, hit, miss = (b[0::3], p[0::3]), (b[1::3], p[1::3]), (b[2::3], p[2::3])
    targets[nothing] = int(Control.NOTHING)
    targets[hit] = pred[hit]
    targets[miss] = (pred[miss] + 1) % vocab
    targets[miss] = np.where(targets[miss] == int(Control.NOTHING), (targets[miss] + 1) % vocab,
                             targets[miss])
    assert (targets[hit] != int(Control.NOTHING)).all()
    batch["user_speech_targets"] = targets
    _, m = forward(graphdef, params, batch, jax.random.key(0), rest, weights={"user_speech": 1.0})
    n_hit, n_miss = len(hit[0]), len(miss[0])
    np.testing.assert_allclose(float(m["user_speech_word_accuracy"]), n_hit / (n_hit + n_miss), rtol=1e-6)
