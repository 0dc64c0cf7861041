"""train/augment.py: muting the model's own audio inputs, whole windows at a time."""

import jax
import numpy as np
import pytest

from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.train.augment import SILENCE_CODE, mute_self_audio


def _batch(b=64, turns=3, seed=0):
    layout = StreamLayout(video_patches=0)
    kinds = np.tile(layout.turn_kinds(), (b, turns)).astype(np.int32)
    rs = np.random.RandomState(seed)
    dmel = rs.randint(1, 16, (b, kinds.shape[1], layout.frames_per_audio_position, 8)).astype(np.uint8)
    return {"kinds": kinds, "dmel": dmel, "token_ids": rs.randint(0, 9, kinds.shape).astype(np.int32)}


def test_muted_windows_hear_silence_only_on_their_own_audio():
    batch = _batch()
    out = jax.tree.map(np.asarray, mute_self_audio(batch, jax.random.key(0), 0.5))
    self_pos = batch["kinds"][0] == int(Kind.MODEL_AUDIO)
    assert self_pos.any() and (~self_pos).any()
    np.testing.assert_array_equal(out["dmel"][:, ~self_pos], batch["dmel"][:, ~self_pos])  # other streams intact
    np.testing.assert_array_equal(out["token_ids"], batch["token_ids"])
    muted = (out["dmel"][:, self_pos] == SILENCE_CODE).all(axis=(1, 2, 3))
    kept = (out["dmel"][:, self_pos] == batch["dmel"][:, self_pos]).all(axis=(1, 2, 3))
    assert np.all(muted ^ kept)  # every window wholly muted or wholly kept (inputs never hold code 0 here)
    assert 16 <= muted.sum() <= 48  # about half of 64


def test_probability_one_and_zero_and_bad_values():
    batch = _batch(b=4)
    self_pos = batch["kinds"][0] == int(Kind.MODEL_AUDIO)
    assert (np.asarray(mute_self_audio(batch, jax.random.key(1), 1.0)["dmel"])[:, self_pos] == SILENCE_CODE).all()
    assert mute_self_audio(batch, jax.random.key(1), 0.0) is batch
    with pytest.raises(ValueError, match="self_audio_dropout must be in"):
        mute_self_audio(batch, jax.random.key(1), 1.5)
