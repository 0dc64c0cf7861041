"""The RTTM/STM helpers of the mono-recording corpus reader, on hand-written files with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from interaction_jax.data import corpus_segments as cs


def test_read_rttm_keeps_speaker_lines_of_the_recording_by_start(tmp_path):
    p = tmp_path / "call.rttm"
    p.write_text("SPEAKER rec 1 2.50 1.00 <NA> <NA> agent <NA> <NA>\n"
                 "SPKR-INFO rec 1 <NA> <NA> <NA> unknown agent <NA> <NA>\n"
                 "SPEAKER rec 1 0.25 2.00 <NA> <NA> caller <NA> <NA>\n")
    assert cs.read_rttm(str(p), None, "rec") == [("caller", 0.25, 2.25), ("agent", 2.5, 3.5)]


def test_a_short_speaker_line_is_named(tmp_path):
    p = tmp_path / "short.rttm"
    p.write_text("SPEAKER rec 1 0.0 1.0\n")
    with pytest.raises(cs.SegmentsError, match="line 1: a SPEAKER line has at least 8 fields"):
        cs.read_rttm(str(p), None, "rec")


def test_roles_map_names_and_refuse_one_speaker_for_both():
    turns = [("caller", 0.0, 1.0), ("agent", 1.0, 2.0), ("third", 2.0, 2.5)]
    mapped, mapping = cs.roles(turns, {"user": "caller", "model": "agent"}, "x.rttm")
    assert mapped == [("user", 0.0, 1.0), ("model", 1.0, 2.0), ("other", 2.0, 2.5)]
    assert mapping == {"caller": "user", "agent": "model", "third": "other"}
    with pytest.raises(cs.SegmentsError, match="same speaker"):
        cs.roles(turns, {"user": "caller", "model": "caller"}, "x.rttm")


def test_stm_words_share_the_utterance_by_characters():
    # "ab" and "cdef" + one space each: widths 3 and 5 of 8 over [1, 3] -> edges 1, 1.75, 3
    words = cs.role_words([], {"spk": "user"}, stm=[("spk", 1.0, 3.0, ["ab", "cdef"])])
    assert words == [("user", "ab", 1.0, 1.75), ("user", "cdef", 1.75, 3.0)]


@pytest.mark.parametrize("overlap", ["user", "both"])
def test_split_channels_by_hand(overlap):
    sr = 10  # samples 0..9 of a 1 s mix; user [0, 0.5), model [0.3, 0.8)
    mix = np.arange(1, 11, dtype=np.float32)
    user, model = cs.split_channels(mix, [("user", 0.0, 0.5), ("model", 0.3, 0.8)], sr, overlap)
    # model alone at samples 5..7: the user channel is silent there and only there
    np.testing.assert_array_equal(user, [1, 2, 3, 4, 5, 0, 0, 0, 9, 10])
    both = [0, 0, 0, 4, 5, 6, 7, 8, 0, 0]
    alone = [0, 0, 0, 0, 0, 6, 7, 8, 0, 0]
    np.testing.assert_array_equal(model, both if overlap == "both" else alone)
