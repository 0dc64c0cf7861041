"""`model.user_speech_feedback`: the transcript a model writes at the user's audio is fed back one
micro-turn later. Checked on hand-built batches (training's teacher forcing), against the training
forward (the engine fed its own heard tokens gives the forward's logits on the same tokens), and
through a live session (what it feeds is what it heard the micro-turn before); the engine checks run
for both `model.user_speech_timing` placements of the transcript."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import config_path
from flax import nnx
from helpers import episode, forced_inputs, grid_and_window

from interaction_jax.config_lib import ConfigError, load_config
from interaction_jax.data.episode import Word
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.session import Chunk, Scheduler
from interaction_jax.model.interaction_model import InteractionModel, user_speech_feedback
from interaction_jax.streams.layout import Kind
from interaction_jax.streams.tokenizer import NUM_CONTROL, ByteTokenizer, Control

N, PAD = int(Control.NOTHING), int(Control.PAD)
TOK = ByteTokenizer()
FEEDBACK = ["model.user_speech_loss_weight=0.5", "model.user_speech_feedback=True", "inference.slots=2"]


def _hand_batch():
    """Two micro-turns of a 6-position layout: [USER_TEXT, USER_AUDIO x2, MODEL_TEXT, MODEL_AUDIO x2]."""
    turn = [Kind.USER_TEXT, Kind.USER_AUDIO, Kind.USER_AUDIO, Kind.MODEL_TEXT, Kind.MODEL_AUDIO, Kind.MODEL_AUDIO]
    kinds = np.array([[int(k) for k in turn * 2]], np.int32)
    token_ids = np.array([[70, PAD, PAD, 71, PAD, PAD, 72, PAD, PAD, 73, PAD, PAD]], np.int32)
    # turn 0 heard the word tokens 100, 101; turn 1 heard 102 then nothing
    targets = np.array([[N, 100, 101, N, N, N, N, 102, N, N, N, N]], np.int32)
    return {"kinds": kinds, "token_ids": token_ids, "user_speech_targets": targets}


def test_teacher_forced_feedback_is_the_previous_turns_transcript():
    got = np.asarray(user_speech_feedback(_hand_batch(), positions_per_turn=6)["token_ids"])
    # typed text and model text untouched; turn 0's audio slots get NOTHING, turn 1's get turn 0's words
    np.testing.assert_array_equal(got, [[70, N, N, 71, PAD, PAD, 72, 100, 101, 73, PAD, PAD]])
    assert user_speech_feedback({"kinds": _hand_batch()["kinds"]}, 6).keys() == {"kinds"}  # no targets: unchanged


def test_feedback_noise_replaces_only_word_tokens():
    b = _hand_batch()
    got = np.asarray(user_speech_feedback(b, 6, jax.random.key(0), noise=1.0, vocab_size=300)["token_ids"])
    fed = got[0, [7, 8]]
    assert np.all((fed >= NUM_CONTROL) & (fed < 300)) and not np.array_equal(fed, [100, 101])
    np.testing.assert_array_equal(got[0, [1, 2]], [N, N])  # NOTHING is never replaced
    none = np.asarray(user_speech_feedback(b, 6, jax.random.key(0), noise=0.0, vocab_size=300)["token_ids"])
    np.testing.assert_array_equal(none[0, [7, 8]], [100, 101])
    with pytest.raises(ValueError, match="rng"):
        user_speech_feedback(b, 6, None, noise=0.5, vocab_size=300)


def test_feedback_needs_the_transcription_target():
    with pytest.raises(ConfigError, match="user_speech_loss_weight"):
        load_config(config_path("tiny.py"), ["model.user_speech_feedback=True"])


def test_user_audio_token_ids_are_ignored_without_feedback():
    """Without the switch the embedding at USER_AUDIO reads no token id (old checkpoints unchanged)."""
    for overrides, changes in (([], False), (FEEDBACK, True)):
        c = load_config(config_path("tiny.py"), overrides)
        model = InteractionModel(c, rngs=nnx.Rngs(0))
        layout, grid, win = grid_and_window(c, episode(0.4))
        batch = {k: jnp.asarray(v[None]) for k, v in win.items()}
        audio = np.asarray(batch["kinds"][0] == int(Kind.USER_AUDIO))
        other = {**batch, "token_ids": jnp.where(audio[None], 200, batch["token_ids"])}
        a, b = np.asarray(model.embed(batch)), np.asarray(model.embed(other))
        np.testing.assert_array_equal(a[0, ~audio], b[0, ~audio])
        assert (not np.allclose(a[0, audio], b[0, audio])) == changes


@pytest.fixture(scope="module", params=["next_turn", "at_end"])
def feedback_engine(request):
    c = load_config(config_path("tiny.py"), FEEDBACK + [f"model.user_speech_timing={request.param}"])
    model = InteractionModel(c, rngs=nnx.Rngs(0))
    return c, model, StreamEngine(c, model, debug_outputs=True)


def test_engine_fed_its_heard_tokens_equals_the_training_forward(feedback_engine):
    """Slot 1 teacher-forced through an episode, its user-audio slots fed the heard tokens of the
    micro-turn before (as a session does): its text logits and heard tokens equal the training
    forward on the window with those same tokens at the USER_AUDIO positions."""
    c, model, engine = feedback_engine
    layout, grid, win = grid_and_window(c, episode(1.0, seed=3))
    ua = layout.block_slice(Kind.USER_AUDIO)
    engine.reset(1, seed=7)
    prev = np.full(layout.audio_positions, N, np.int32)
    outs = []
    for t in range(grid.num_turns):
        inputs = forced_inputs(engine, grid, t, 1)
        inputs["token_ids"][1, ua] = prev
        out = engine.step(inputs)
        prev = np.asarray(out["heard_tokens"][1])
        outs.append(out)
    heard = np.stack([np.asarray(o["heard_tokens"][1]) for o in outs])  # [turns, A]
    n = grid.num_turns
    ui = layout.kind_indices(Kind.USER_AUDIO, n)
    tok = np.array(win["token_ids"])
    tok[ui[1:]] = heard[:-1]
    tok[ui[0]] = N
    ref = model({**{k: jnp.asarray(v[None]) for k, v in win.items()}, "token_ids": jnp.asarray(tok[None])})
    logits = np.asarray(ref["text_logits"][0])
    ti = layout.kind_indices(Kind.MODEL_TEXT, n).reshape(-1)
    np.testing.assert_allclose(np.concatenate([o["text_logits"][1] for o in outs]), logits[ti], atol=2e-5, rtol=0)
    ref_heard = logits[ui].argmax(-1)
    top = np.take_along_axis(logits[ui], heard[..., None], -1)[..., 0]
    assert np.all((heard == ref_heard) | (logits[ui].max(-1) - top < 1e-4))
    # and the fed tokens matter: NOTHING fed everywhere gives other logits
    silent = np.array(win["token_ids"])
    silent[ui] = N
    other = np.asarray(model({**{k: jnp.asarray(v[None]) for k, v in win.items()},
                              "token_ids": jnp.asarray(silent[None])})["text_logits"][0])
    assert np.any(heard[:-1] != N) and not np.allclose(other[ti], logits[ti], atol=1e-3)


USER_WORDS = [Word("yes", 0.05, 0.31), Word("go", 0.33, 0.47), Word("now", 0.5, 0.78)]


def test_engine_fed_the_transcript_targets_equals_the_teacher_forced_forward(feedback_engine):
    """The engine fed, at its user-audio slots, the transcript targets of the micro-turn before gives
    the training forward's logits on the window with `user_speech_feedback` applied (training's
    teacher forcing, as packed with the config's `user_speech_timing`)."""
    c, model, engine = feedback_engine
    layout, grid, win = grid_and_window(c, dataclasses.replace(episode(1.0, seed=5), user_words=USER_WORDS))
    ua, n = layout.block_slice(Kind.USER_AUDIO), grid.num_turns
    if c.model.user_speech_timing == "at_end":  # each word starts in the micro-turn in which it ends
        for w in USER_WORDS:
            assert int(TOK.encode(w.text)[0]) in grid.user_speech[layout.input_turn(w.end)].tolist(), w
    engine.reset(1, seed=7)
    outs = []
    for t in range(n):
        inputs = forced_inputs(engine, grid, t, 1)
        inputs["token_ids"][1, ua] = grid.user_speech[t - 1] if t else N
        outs.append(engine.step(inputs))
    batch = {k: jnp.asarray(v[None]) for k, v in win.items()}
    fed = user_speech_feedback(batch, layout.positions_per_turn)
    ui = layout.kind_indices(Kind.USER_AUDIO, n)
    np.testing.assert_array_equal(np.asarray(fed["token_ids"][0])[ui[1:]], grid.user_speech[:-1])
    assert np.any(grid.user_speech[:-1] != N)
    logits = np.asarray(model(fed)["text_logits"][0])
    ti = layout.kind_indices(Kind.MODEL_TEXT, n).reshape(-1)
    np.testing.assert_allclose(np.concatenate([o["text_logits"][1] for o in outs]), logits[ti], atol=2e-5, rtol=0)
    heard = np.stack([np.asarray(o["heard_tokens"][1]) for o in outs])
    top = np.take_along_axis(logits[ui], heard[..., None], -1)[..., 0]
    assert np.all((heard == logits[ui].argmax(-1)) | (logits[ui].max(-1) - top < 1e-4))


def test_a_session_feeds_what_it_heard_the_micro_turn_before(feedback_engine):
    c, model, engine = feedback_engine
    layout = engine.layout
    ua = layout.block_slice(Kind.USER_AUDIO)
    fed, heard = [], []
    step = engine.step

    def spy(inputs):
        fed.append(np.array(inputs["token_ids"][:, ua]))
        out = step(inputs)
        heard.append(np.array(out["heard_tokens"]))
        return out

    engine.step = spy
    try:
        sched = Scheduler(engine)
        s = sched.open_session(seed=1)
        ep = episode(0.8, seed=4)
        S = int(layout.micro_turn_s * 16000)
        for t in range(layout.num_turns(ep.duration)):
            s.push(Chunk(audio=ep.user_audio[t * S : (t + 1) * S]))
            sched.tick()
        s.close()
    finally:
        engine.step = step
    row = s.slot
    np.testing.assert_array_equal(fed[0][row], [N] * layout.audio_positions)
    for t in range(1, len(fed)):
        np.testing.assert_array_equal(fed[t][row], heard[t - 1][row], err_msg=f"micro-turn {t}")
