"""`model.user_speech_timing`: where a user word's transcript targets may start.

"next_turn" (the default) must pack exactly as before the option existed (a frozen copy of that
placement below). "at_end" is checked against frame times computed here from samples: frame k is
centred at sample k*hop, its analysis window ends at k*hop + win//2, and a USER_AUDIO position
holds the frames whose window ends inside its span of F hops (checked against the packed dMel).
"""

import math

import numpy as np
import pytest
from conftest import config_path

from interaction_jax.config_lib import ConfigError, load_config
from interaction_jax.data.episode import Episode, Word
from interaction_jax.data.pipeline import ToGrid
from interaction_jax.data.tasks import generate
from interaction_jax.features import mel as mel_lib
from interaction_jax.streams import text_streams
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.pack import EpisodeGrid, pack_window
from interaction_jax.streams.tokenizer import ByteTokenizer, Control

TOK = ByteTokenizer()
PARAMS = mel_lib.FeatureParams()
NOTHING = int(Control.NOTHING)


@pytest.fixture(scope="module")
def layout():
    return StreamLayout.from_config(load_config(config_path("tiny.py")))


@pytest.fixture(scope="module")
def episodes():
    """CueSpeak episodes of a few seconds (long user word streams) and a few mixed tasks."""
    eps = [generate("cuespeak", s, duration_s=4.0) for s in range(24)]
    eps += [generate("mix", 100 + s, duration_s=3.0) for s in range(6)]
    assert sum(len(e.user_words) for e in eps) > 100
    return eps


def _old_fill(tokens, num_turns, slots):
    """`fill_slots` as it was before token slots existed: turn granularity, overflow carried."""
    out = np.full((num_turns, slots), NOTHING, np.int32)
    ordered = sorted(tokens, key=lambda x: (x.turn, x.time, x.seq))
    i = 0
    for t in range(num_turns):
        k = 0
        while i < len(ordered) and ordered[i].turn <= t and k < slots:
            out[t, k] = ordered[i].token
            i, k = i + 1, k + 1
    return out


def _old_user_speech(ep, layout, n):
    """The transcript placement before the option: every token from the micro-turn after the end."""
    toks = []
    for w in sorted(ep.user_words, key=lambda w: w.end):
        turn = int(np.floor(w.end / layout.micro_turn_s + 1e-9)) + 1
        toks += [text_streams.TimedToken(turn, w.end, int(i), len(toks) + j)
                 for j, i in enumerate(TOK.encode(w.text + " "))]
    return _old_fill(toks, n, layout.audio_positions)


def test_default_next_turn_packs_as_before(layout, episodes):
    for ep in episodes[::3]:
        default = EpisodeGrid.from_episode(ep, layout, TOK, PARAMS)
        named = EpisodeGrid.from_episode(ep, layout, TOK, PARAMS, user_speech_timing="next_turn")
        n = default.num_turns
        np.testing.assert_array_equal(default.user_speech, _old_user_speech(ep, layout, n))
        for stream, tokens, slots in (
            ("user_text", text_streams.user_text_tokens, layout.user_text_slots),
            ("background", text_streams.background_tokens, layout.background_slots),
            ("model_text", text_streams.model_text_tokens, layout.model_text_slots),
        ):
            np.testing.assert_array_equal(getattr(default, stream), _old_fill(tokens(ep, layout, TOK), n, slots))
        a, b = pack_window(default, 0, n), pack_window(named, 0, n)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _frame_position(k: int, layout) -> int:
    """Flat USER_AUDIO position (turn * A + slot) holding frame k: the one whose span of F hops
    contains the end of the frame's analysis window (sample k*hop + win//2)."""
    span = layout.frames_per_audio_position * PARAMS.hop_length
    return math.ceil((k * PARAMS.hop_length + PARAMS.win_length // 2) / span) - 1


def _last_frame(end_s: float) -> int:
    """Last frame centred inside a word ending at `end_s`: centre sample <= the word's last sample."""
    last_sample = math.ceil(end_s * PARAMS.sample_rate - 1e-6) - 1
    return last_sample // PARAMS.hop_length


def test_frame_positions_match_the_packed_dmel(layout, episodes):
    """The frame -> position rule used below is the one the packed input follows."""
    F, A = layout.frames_per_audio_position, layout.audio_positions
    for ep in episodes[:4]:
        grid = EpisodeGrid.from_episode(ep, layout, TOK, PARAMS)
        codes = mel_lib.dmel_encode(mel_lib.log_mel(ep.user_audio, PARAMS), PARAMS)
        dmel = pack_window(grid, 0, grid.num_turns)["dmel"][layout.kind_indices(Kind.USER_AUDIO, grid.num_turns)]
        dmel = dmel.reshape(grid.num_turns * A, F, -1)
        rows: dict[int, list[int]] = {}
        for k in range(len(codes)):
            rows.setdefault(_frame_position(k, layout), []).append(k)
        full = {q: ks for q, ks in rows.items() if q < len(dmel) and len(ks) == F}  # only real frames
        for q, ks in full.items():
            np.testing.assert_array_equal(dmel[q], codes[ks], err_msg=f"{ep.episode_id} position {q}")
        assert len(full) >= len(dmel) - 2


def _simulate(words, layout, n) -> tuple[np.ndarray, int]:
    """Greedy flat fill: each token at the first free position >= its word's earliest legal one."""
    A = layout.audio_positions
    queue = []
    for w in sorted(words, key=lambda w: w.end):
        q = _frame_position(_last_frame(w.end), layout)
        queue += [(q, int(i)) for i in TOK.encode(w.text + " ")]
    out = np.full(n * A, NOTHING, np.int32)
    i = 0
    for p in range(n * A):
        if i < len(queue) and queue[i][0] <= p:
            out[p] = queue[i][1]
            i += 1
    return out, len(queue) - i


def test_at_end_never_writes_a_word_before_its_last_frame_is_heard(layout, episodes):
    A = layout.audio_positions
    earlier = 0
    for ep in episodes:
        grid = EpisodeGrid.from_episode(ep, layout, TOK, PARAMS, user_speech_timing="at_end")
        n = grid.num_turns
        out = pack_window(grid, 0, n)
        got = out["user_speech_targets"][layout.kind_indices(Kind.USER_AUDIO, n)].reshape(-1)
        assert (out["user_speech_targets"][out["kinds"] != int(Kind.USER_AUDIO)] == 0).all()
        # causality: token j of the stream sits at or after its word's last-frame position
        ready = [(_frame_position(_last_frame(w.end), layout), len(TOK.encode(w.text + " ")))
                 for w in sorted(ep.user_words, key=lambda w: w.end)]
        ready = [q for q, m in ready for _ in range(m)]
        placed = np.flatnonzero(got != NOTHING)
        assert len(placed) <= len(ready)
        for j, p in enumerate(placed):
            assert p >= ready[j], (ep.episode_id, j, p, ready[j])
        # exact placement: the earliest legal positions, overflow carried forward in order
        want, left = _simulate(ep.user_words, layout, n)
        np.testing.assert_array_equal(got, want, err_msg=ep.episode_id)
        assert grid.overflow["user_speech"] == left
        # never later than next_turn, often a micro-turn earlier
        old = _old_user_speech(ep, layout, n).reshape(-1)
        old_placed = np.flatnonzero(old != NOTHING)
        assert len(old_placed) <= len(placed)
        assert np.all(placed[: len(old_placed)] <= old_placed)
        np.testing.assert_array_equal(got[placed[: len(old_placed)]], old[old_placed])
        earlier += int(np.sum(placed[: len(old_placed)] // A < old_placed // A))
    assert earlier > 50


def test_at_end_by_hand(layout):
    """'ab' ends at 0.31 s: its last frame (centred at 0.3 s, frame 24) ends its window at 0.325 s,
    inside position 6 = micro-turn 1, slot 2 (0.3-0.35 s); next_turn would start at micro-turn 2."""
    n = int(0.8 * PARAMS.sample_rate)
    ep = Episode(episode_id="h", duration=0.8, user_audio=np.zeros(n, np.float32),
                 model_audio=np.zeros(n, np.float32), user_words=[Word("ab", 0.05, 0.31)])
    at_end = EpisodeGrid.from_episode(ep, layout, TOK, PARAMS, user_speech_timing="at_end").user_speech
    nxt = EpisodeGrid.from_episode(ep, layout, TOK, PARAMS).user_speech
    word = TOK.encode("ab ")
    assert at_end[1].tolist() == [NOTHING, NOTHING, *word[:2]] and at_end[2, 0] == word[2]
    assert nxt[2, :3].tolist() == word and (nxt[1] == NOTHING).all()


def test_unknown_timing_is_one_clear_error(layout):
    with pytest.raises(ConfigError, match=r"model\.user_speech_timing='soon' is not one of \['next_turn', 'at_end'\]"):
        load_config(config_path("tiny.py"), ["model.user_speech_timing=soon"])
    ep = generate("cuespeak", 0, duration_s=1.0)
    with pytest.raises(ValueError, match="user_speech_timing='soon': expected one of"):
        EpisodeGrid.from_episode(ep, layout, TOK, PARAMS, user_speech_timing="soon")


def test_the_pipeline_packs_with_the_configured_timing(episodes):
    c = load_config(config_path("tiny.py"), ["model.user_speech_timing=at_end"])
    lay = StreamLayout.from_config(c)
    grid = ToGrid.from_config(c, lay).map(episodes[0])
    want = EpisodeGrid.from_episode(episodes[0], lay, TOK, PARAMS, user_speech_timing="at_end")
    np.testing.assert_array_equal(grid.user_speech, want.user_speech)
    assert not np.array_equal(grid.user_speech, EpisodeGrid.from_episode(episodes[0], lay, TOK, PARAMS).user_speech)
