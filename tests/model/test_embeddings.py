"""Input embeddings: dMel bag vs a hand sum, content chosen by kind, video scatter and 'no frame'."""

import numpy as np
import pytest
from conftest import config_path
from flax import nnx

from interaction_jax.config_lib import load_config
from interaction_jax.model.embeddings import DMelBag, InputEmbedding
from interaction_jax.model.interaction_model import dummy_batch
from interaction_jax.streams.layout import Kind, StreamLayout

_apply = nnx.jit(lambda m, x: m(x))
_parts = nnx.jit(lambda e, b: (e(b), e.text.embed(b["token_ids"]), e.dmel(b["dmel"]), e.hmlp(b["patches"])))


def _input_embedding(layout, time_embedding):
    return InputEmbedding(
        d_model=16,
        vocab_size=272,
        n_mels=layout.n_mels,
        frames_per_position=layout.frames_per_audio_position,
        dmel_bins=16,
        patch_size=layout.patch_size,
        video_patches=layout.video_patches,
        time_embedding=time_embedding,
        rngs=nnx.Rngs(0),
    )


def test_dmel_bag_equals_hand_sum_of_table_rows():
    m, f, d = 5, 3, 4
    bag = DMelBag(m, d, bins=16, frames=f, rngs=nnx.Rngs(0))
    codes = np.random.RandomState(0).randint(0, 16, (2, 3, f, m))
    table = np.asarray(bag.table[...])
    expected = np.zeros((2, 3, d), np.float32)
    for b in range(2):
        for p in range(3):
            for fr in range(f):
                for ch in range(m):
                    expected[b, p] += table[ch, codes[b, p, fr, ch]]
    np.testing.assert_allclose(_apply(bag, codes.astype(np.uint8)), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def setup():
    c = load_config(config_path("tiny.py"), ["model.d_model=16"])
    layout = StreamLayout.from_config(c)
    emb = _input_embedding(layout, False)
    batch = {k: np.asarray(v) for k, v in dummy_batch(c, 2, 3, seed=1).items()}
    batch["video_present"] = np.array([[True, False, True], [True, True, False]])
    parts = [np.asarray(a) for a in _parts(emb, batch)]
    return layout, emb, batch, parts


def test_content_by_kind(setup):
    layout, emb, batch, (x, text, audio, _) = setup
    kinds = np.asarray(batch["kinds"])
    kind_rows = np.asarray(emb.kind[...])[kinds]
    for k in (Kind.USER_TEXT, Kind.BACKGROUND, Kind.MODEL_TEXT):
        sel = kinds == int(k)
        np.testing.assert_allclose(x[sel], (kind_rows + text)[sel], atol=1e-5)
    for k in (Kind.USER_AUDIO, Kind.MODEL_AUDIO):
        sel = kinds == int(k)
        np.testing.assert_allclose(x[sel], (kind_rows + audio)[sel], atol=1e-5)


def test_video_scattered_to_static_indices_and_no_frame(setup):
    layout, emb, batch, (x, _, _, patch_emb) = setup  # patch_emb [B, W, V, D]
    w = batch["patches"].shape[1]
    idx = layout.kind_indices(Kind.VIDEO, w)  # [W, V]
    kind_row = np.asarray(emb.kind[...])[int(Kind.VIDEO)]
    no_frame = np.asarray(emb.no_frame[...])
    present = np.asarray(batch["video_present"])
    for b in range(2):
        for t in range(w):
            want = patch_emb[b, t] if present[b, t] else np.broadcast_to(no_frame, patch_emb[b, t].shape)
            np.testing.assert_allclose(x[b, idx[t]], kind_row + want, atol=1e-5)


def test_time_embedding_switch_changes_only_with_micro_turn(setup):
    layout, emb, batch, (x, _, _, _) = setup
    emb_t = _input_embedding(layout, True)
    diff = np.asarray(_apply(emb_t, batch)) - x
    turn = np.asarray(batch["micro_turn"])
    assert np.allclose(diff[turn == 0], diff[turn == 0][0], atol=1e-5)
    assert not np.allclose(diff[turn == 0][0], diff[turn == 1][0])


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def test_dmel_frames_mlp_equals_a_numpy_encoder_and_keeps_frame_order():
    from interaction_jax.model.embeddings import DMelFramesMLP

    M, K, F, W, H, D = 5, 4, 3, 6, 7, 8
    emb = DMelFramesMLP(M, D, bins=K, frames=F, width=W, hidden=H, rngs=nnx.Rngs(0))
    rs = np.random.RandomState(0)
    codes = rs.randint(0, K, (2, 3, F, M))
    table, w_in, w_out = (np.asarray(x[...]) for x in (emb.table, emb.w_in, emb.w_out))
    b_in = rs.normal(size=H).astype(np.float32)
    emb.b_in[...] = b_in
    want = np.zeros((2, 3, D))
    for i in np.ndindex(2, 3):
        frames = [sum(table[m, codes[i][f, m]] for m in range(M)) for f in range(F)]  # per-frame bags
        want[i] = _gelu_tanh(np.concatenate(frames) @ w_in + b_in) @ w_out
    np.testing.assert_allclose(np.asarray(emb(codes)), want, rtol=1e-5, atol=1e-5)
    # the bag of the same codes does not see the frames' order; this encoder does
    swapped = codes[..., ::-1, :]  # frames reversed (channels kept)
    assert not np.allclose(np.asarray(emb(swapped)), np.asarray(emb(codes)), atol=1e-4)
    bag = DMelBag(M, D, bins=K, frames=F, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(bag(swapped)), np.asarray(bag(codes)), atol=1e-5)


def test_dmel_embed_option_is_validated():
    with pytest.raises(Exception, match="dmel_embed"):
        load_config(config_path("tiny.py"), ["model.dmel_embed=conv"])
    with pytest.raises(ValueError, match="batch-invariant"):
        from interaction_jax.model.interaction_model import InteractionModel

        c = load_config(config_path("tiny.py"), ["model.dmel_embed=frames_mlp", "model.batch_invariant=True"])
        InteractionModel(c, rngs=nnx.Rngs(0))
