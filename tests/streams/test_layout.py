"""StreamLayout: block order, sizes, time mapping and config validation."""

import numpy as np
import pytest
from conftest import config_path

from interaction_jax.config_lib import ConfigError, load_config
from interaction_jax.streams.layout import Kind, StreamLayout


def test_default_layout_matches_design():
    lay = StreamLayout()
    assert lay.audio_positions == 4 and lay.frames_per_turn == 16
    assert lay.positions_per_turn == 16 + 4 + 4 + 4 + 4 + 4
    assert [b.kind for b in lay.blocks] == list(Kind)
    assert lay.input_size == 28 and lay.output_size == 8
    # output block is last: everything the model emits follows the whole input block
    assert lay.block_slice(Kind.MODEL_TEXT).start == lay.input_size


def test_kind_indices_are_the_positions_of_that_kind():
    lay = StreamLayout(video_patches=4, video_frame_size=80)
    kinds = np.tile(lay.turn_kinds(), 3)
    for k in Kind:
        idx = lay.kind_indices(k, 3)
        assert (kinds[idx] == k).all()
        assert idx.size == (kinds == k).sum()


def test_disabled_video_removes_its_positions():
    lay = StreamLayout(video_patches=0)
    assert Kind.VIDEO not in lay.turn_kinds()
    assert lay.packed_spec(2)["patches"][0] == (2, 0, 40, 40, 3)


def test_time_mapping_and_one_turn_output_delay():
    lay = StreamLayout()
    assert lay.input_turn(0.0) == 0 and lay.input_turn(0.1999) == 0 and lay.input_turn(0.2) == 1
    # a word the model starts at 0.45 s is produced by micro-turn 1, which plays in [0.4, 0.6)
    assert lay.output_turn(0.45) == 1
    assert lay.output_window(1) == pytest.approx((0.4, 0.6))
    assert lay.num_turns(1.0) == 5 and lay.num_turns(1.01) == 6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(micro_turn_ms=190.0), "whole multiple"),
        (dict(video_patches=9), "video_patches"),
        (dict(user_text_slots=-1), "user_text_slots"),
    ],
)
def test_bad_layouts_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamLayout(**kwargs)


def test_layout_from_tiny_config_and_unknown_override():
    cfg = load_config(config_path("tiny.py"), ["layout.model_text_slots=6"])
    lay = StreamLayout.from_config(cfg)
    assert lay.model_text_slots == 6 and lay.video_patches == 4
    with pytest.raises(ConfigError, match="no field 'model_txt_slots'"):
        load_config(config_path("tiny.py"), ["layout.model_txt_slots=6"])
