"""Packing/unpacking properties: static shapes, round trip, each event in one micro-turn, causality."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interaction_jax.data.episode import BackgroundEvent, Episode, TextEvent, VideoFrame, Word
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.pack import EpisodeGrid, causal_frame_delay, pack_window, unpack
from interaction_jax.streams.tokenizer import NUM_CONTROL, ByteTokenizer, Control

LAYOUT = StreamLayout(video_patches=4, video_frame_size=80)
TOK = ByteTokenizer()
SR = 16000
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = st.text(alphabet="abcdefghij", min_size=1, max_size=5)


@st.composite
def episodes(draw, max_duration=3.0):
    duration = draw(st.floats(0.5, max_duration))
    n = int(round(duration * SR))

    def times(k):
        return sorted(draw(st.lists(st.floats(0, duration - 0.01), min_size=0, max_size=k)))

    model_words, t = [], 0.25
    for _ in range(draw(st.integers(0, 4))):
        t += draw(st.floats(0.05, 0.9))
        if t + 0.1 >= duration:
            break
        model_words.append(Word(draw(WORDS), t, t + 0.1))
        t += 0.1
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    frames = [VideoFrame(tt, rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)) for tt in times(3)]
    return Episode(
        episode_id="h",
        duration=duration,
        user_audio=(0.1 * rng.standard_normal(n)).astype(np.float32),
        model_audio=(0.1 * rng.standard_normal(n)).astype(np.float32),
        model_words=model_words,
        user_text=[TextEvent(draw(WORDS), tt) for tt in times(2)],
        background=[BackgroundEvent("result", tt, draw(WORDS), 1) for tt in times(2)],
        video=frames,
    )


def _grid(ep, **kw):
    return EpisodeGrid.from_episode(ep, LAYOUT, TOK, **kw)


@SETTINGS
@given(episodes(), st.integers(0, 4), st.integers(1, 20))
def test_static_shapes_for_any_content(ep, start, w):
    out = pack_window(_grid(ep), start, w)
    spec = LAYOUT.packed_spec(w)
    assert set(out) == set(spec)
    for k, (shape, dtype) in spec.items():
        assert out[k].shape == shape and out[k].dtype == dtype, k
    # padding turns past the end carry no loss
    invalid = ~out["valid"]
    assert not out["text_loss_mask"][invalid].any() and not out["audio_loss_mask"][invalid].any()


@SETTINGS
@given(episodes())
def test_every_text_event_lands_in_exactly_one_micro_turn(ep):
    grid = _grid(ep)
    for name, events, stream in [
        ("user_text", [(e.time, TOK.encode(e.text) + [Control.TEXT_END]) for e in ep.user_text], grid.user_text),
        (
            "background",
            [(e.time, [Control.BG_START] + TOK.encode(e.text) + [Control.BG_END]) for e in ep.background],
            grid.background,
        ),
    ]:
        placed = [(t, int(x)) for t in range(grid.num_turns) for x in stream[t] if x != Control.NOTHING]
        by_time = sorted(events, key=lambda e: e[0])  # stable: events at one time keep their order
        expected = [(LAYOUT.input_turn(time), int(i)) for time, ids in by_time for i in ids]
        assert grid.overflow[name] == len(expected) - len(placed)
        # same tokens, same order, never before their arrival micro-turn
        assert [i for _, i in placed] == [i for _, i in expected][: len(placed)]
        assert all(tp >= te for (tp, _), (te, _) in zip(placed, expected))


def test_every_audio_frame_lands_in_exactly_one_micro_turn():
    # encode the frame index into the first three channels of a synthetic log-mel
    dur, M = 1.0, LAYOUT.n_mels
    n_frames = 1 + int(dur * SR) // 200
    centers = -7 + 0.6 * np.arange(16)
    idx = np.arange(n_frames)
    logmel = np.full((n_frames, M), -7.0, np.float32)
    logmel[:, 0] = centers[idx % 16]
    logmel[:, 1] = centers[(idx // 16) % 16]
    logmel[:, 2] = centers[1 + idx // 256]
    grid = _grid(Episode("a", dur), user_logmel=logmel, model_logmel=logmel)
    codes = grid.user_dmel.astype(int)
    got = codes[:, 0] + 16 * codes[:, 1] + 256 * (codes[:, 2] - 1)
    real = got[codes[:, 2] > 0]  # padding frames are silence (code 0)
    assert sorted(real.tolist()) == list(range(len(real)))  # each frame once, in order
    d = causal_frame_delay(800, 200)
    N = LAYOUT.frames_per_turn
    for t in range(grid.num_turns):
        k = got[t * N : (t + 1) * N]
        k = k[codes[t * N : (t + 1) * N, 2] > 0]
        # a frame's analysis window (centre k*200 +- 400 samples) ends inside its micro-turn
        assert (k * 200 + 400 <= (t + 1) * 3200).all()
        assert (k == np.arange(t * N - d, (t + 1) * N - d)[-len(k) :]).all()


@SETTINGS
@given(episodes())
def test_pack_unpack_round_trip_of_model_words(ep):
    grid = _grid(ep)
    out = pack_window(grid, 0, grid.num_turns)
    sl = LAYOUT.kind_indices(Kind.MODEL_TEXT, grid.num_turns)
    mel_idx = LAYOUT.kind_indices(Kind.MODEL_AUDIO, grid.num_turns)
    streams = unpack(LAYOUT, TOK, np.arange(grid.num_turns), out["text_targets"][sl], out["mel_targets"][mel_idx])
    if grid.overflow["model_text"] == 0:
        assert [w.text for w in streams.words] == [w.text for w in ep.model_words]
        for got, want in zip(streams.words, ep.model_words):
            # produced no earlier than the micro-turn whose output window contains the word start
            assert got.start >= LAYOUT.output_window(LAYOUT.output_turn(want.start))[0] - 1e-9
        names = [n for _, n in streams.events]
        assert names.count("SPEECH_START") == names.count("SPEECH_END")
    # mel frames come back in time order starting at the first output window
    assert streams.mel_start == LAYOUT.output_window(0)[0]
    np.testing.assert_array_equal(streams.mel, grid.model_logmel[16 : 16 * (grid.num_turns + 1)])


@SETTINGS
@given(episodes(), st.floats(0.2, 2.0), st.integers(0, 2**31))
def test_causality_inputs_of_turn_t_depend_only_on_the_past(ep, tau, seed):
    """Changing anything at or after time tau leaves the input blocks of earlier turns unchanged."""
    rng = np.random.default_rng(seed)
    tau = min(tau, ep.duration)
    a = ep.user_audio.copy()
    cut = int(tau * SR)
    a[cut:] = rng.standard_normal(len(a) - cut).astype(np.float32)
    changed = Episode(
        "h2",
        ep.duration,
        user_audio=a,
        model_audio=ep.model_audio,
        model_words=ep.model_words,
        user_text=[e for e in ep.user_text if e.time < tau] + [TextEvent("zz", tau)],
        background=[e for e in ep.background if e.time < tau] + [BackgroundEvent("result", tau, "q", 2)],
        video=[f for f in ep.video if f.time < tau] + [VideoFrame(tau, np.zeros((80, 80, 3), np.uint8))],
    )
    g1, g2 = _grid(ep), _grid(changed)
    n_safe = int(np.floor(tau / LAYOUT.micro_turn_s + 1e-9))  # turns that end by tau
    if n_safe == 0:
        return
    o1, o2 = pack_window(g1, 0, n_safe), pack_window(g2, 0, n_safe)
    inp = np.isin(o1["kinds"], [Kind.VIDEO, Kind.USER_TEXT, Kind.BACKGROUND, Kind.USER_AUDIO])
    for key in ("token_ids", "dmel"):
        np.testing.assert_array_equal(o1[key][inp], o2[key][inp], err_msg=key)
    np.testing.assert_array_equal(o1["patches"], o2["patches"])


@SETTINGS
@given(episodes())
def test_model_text_is_never_produced_before_its_output_window(ep):
    grid = _grid(ep)
    starts = {}
    for w in ep.model_words:
        starts.setdefault(w.text, []).append(w.start)
    sl = LAYOUT.block_slice(Kind.MODEL_TEXT)
    out = pack_window(grid, 0, grid.num_turns)
    tgt = out["text_targets"].reshape(grid.num_turns, -1)[:, sl]
    # the first byte of the k-th word appears in a turn whose window starts after the word is due
    first_bytes = [(t, i) for t in range(grid.num_turns) for i, x in enumerate(tgt[t]) if x >= NUM_CONTROL]
    if ep.model_words and grid.overflow["model_text"] == 0:
        t_first = first_bytes[0][0]
        assert LAYOUT.output_window(t_first)[1] > ep.model_words[0].start


def test_model_audio_inputs_are_the_previous_outputs():
    rng = np.random.default_rng(0)
    ep = Episode("m", 1.2, model_audio=0.3 * rng.standard_normal(int(1.2 * SR)).astype(np.float32))
    grid = _grid(ep)
    out = pack_window(grid, 0, grid.num_turns)
    idx = LAYOUT.kind_indices(Kind.MODEL_AUDIO, grid.num_turns).reshape(-1)
    from interaction_jax.features.mel import FeatureParams, dmel_encode

    fed = out["dmel"][idx]  # [turns * A, F, M]
    targets = out["mel_targets"][idx]
    assert (fed[0] == 0).all()  # silence before the first output
    np.testing.assert_array_equal(fed[1:], dmel_encode(targets[:-1], FeatureParams()))
    # text inputs are the previous model-text targets (shifted across micro-turns)
    ti = LAYOUT.kind_indices(Kind.MODEL_TEXT, grid.num_turns).reshape(-1)
    np.testing.assert_array_equal(out["token_ids"][ti][1:], out["text_targets"][ti][:-1])


def test_window_in_the_middle_matches_the_full_packing():
    rng = np.random.default_rng(1)
    n = int(2.0 * SR)
    ep = Episode(
        "w",
        2.0,
        user_audio=0.1 * rng.standard_normal(n).astype(np.float32),
        model_words=[Word("hello", 0.5, 0.8), Word("there", 0.85, 1.2)],
    )
    grid = _grid(ep)
    full = pack_window(grid, 0, grid.num_turns)
    part = pack_window(grid, 3, 4)
    P = LAYOUT.positions_per_turn
    for key in ("token_ids", "dmel", "text_targets", "mel_targets", "kinds", "micro_turn"):
        np.testing.assert_array_equal(part[key], full[key][3 * P : 7 * P], err_msg=key)


def test_a_request_is_written_whole_before_a_filler_starting_with_it():
    """A delegation and the filler that starts at the same moment: the model text holds
    SPEECH_START only after DELEGATE request DELEGATE_END, never the filler's first word inside."""
    request = "what is 4676 plus 2179"
    ep = Episode(
        "d", 3.0,
        model_words=[Word("Let", 1.0, 1.2), Word("me", 1.25, 1.4), Word("check.", 1.45, 1.8)],
        background=[BackgroundEvent("request", 1.0, request, 1)],
    )  # fmt: skip
    grid = _grid(ep)
    stream = [int(x) for x in grid.model_text.reshape(-1) if int(x) != int(Control.NOTHING)]
    d, e = stream.index(int(Control.DELEGATE)), stream.index(int(Control.DELEGATE_END))
    assert TOK.decode(stream[d + 1 : e]) == request
    assert stream.index(int(Control.SPEECH_START)) == e + 1
    assert TOK.decode(stream[e + 2 : e + 2 + len("Let me check.")]) == "Let me check."


def test_user_speech_targets_write_each_heard_word_after_it_ends():
    """The transcription targets hold the user's words, in order, at USER_AUDIO positions only,
    each word starting no earlier than the micro-turn after the one in which it ends."""
    n = int(2.4 * SR)
    words = [Word("ab", 0.05, 0.31), Word("cde", 0.40, 0.79), Word("f", 0.81, 0.85), Word("ghij", 1.50, 1.90)]
    ep = Episode(
        episode_id="s", duration=2.4, user_audio=np.zeros(n, np.float32), model_audio=np.zeros(n, np.float32),
        user_words=words,
    )
    out = pack_window(_grid(ep), 0, LAYOUT.num_turns(2.4))
    P = LAYOUT.positions_per_turn
    tgt, kinds = out["user_speech_targets"], out["kinds"]
    written = np.flatnonzero((kinds == int(Kind.USER_AUDIO)) & (tgt != int(Control.NOTHING)))
    assert (tgt[kinds != int(Kind.USER_AUDIO)] == 0).all()  # nothing outside USER_AUDIO
    text = bytes(int(t) - NUM_CONTROL for t in tgt[written]).decode()
    assert text == "ab cde f ghij "
    # first byte of each word: its micro-turn is after the one holding the word's end
    starts = [0, 3, 7, 9]
    for w, i in zip(words, starts):
        turn = written[i] // P
        assert turn >= int(np.floor(w.end / LAYOUT.micro_turn_s)) + 1, (w, turn)
    assert written[9] // P == int(np.floor(1.90 / 0.2)) + 1  # no backlog: written right after it is heard
