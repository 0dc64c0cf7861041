"""Sessions and scheduler: live chunks build exactly pack_window's input block, capacity errors,
join/leave independence, hard context limit, ring row mapping vs a brute-force simulation."""

import numpy as np
import pytest
from conftest import config_path
from flax import nnx
from helpers import episode, grid_and_window

from interaction_jax.background.protocol import DelegationEvent
from interaction_jax.config_lib import load_config
from interaction_jax.inference.cache import ContextPolicy, SessionLimitError
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.session import Chunk, NoCapacityError, Scheduler
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.streams.layout import Kind
from interaction_jax.streams.pack import pack_window
from interaction_jax.streams.tokenizer import Control


@pytest.fixture(scope="module")
def engine():
    c = load_config(config_path("tiny.py"), ["inference.slots=3"])  # same compiled step as test_engine
    return StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)), debug_outputs=True)


def _chunks(ep, layout):
    """The episode cut into 200 ms chunks, each event in the micro-turn it arrives in."""
    S = int(layout.micro_turn_s * 16000)
    n = layout.num_turns(ep.duration)
    chunks = [Chunk(audio=ep.user_audio[t * S : (t + 1) * S]) for t in range(n)]
    for ev in ep.user_text:
        chunks[layout.input_turn(ev.time)].text = ev.text
    for ev in ep.background:
        if ev.kind == "result":
            chunks[layout.input_turn(ev.time)].background = [DelegationEvent("done", ev.job_id, "s", ev.time, ev.text)]
    for fr in sorted(ep.video, key=lambda f: f.time):
        chunks[layout.input_turn(fr.time)].video = fr.image
    return chunks


def test_session_inputs_equal_pack_window(engine):
    ep = episode(1.2, seed=5)
    layout, grid, _ = grid_and_window(engine.config, ep)
    sched = Scheduler(engine)
    s = sched.open_session(seed=1)
    n_in = layout.input_size
    for t, chunk in enumerate(_chunks(ep, layout)):
        inputs = engine.empty_inputs()
        s.fill_inputs(inputs, chunk)
        ref = pack_window(grid, t, 1)
        np.testing.assert_array_equal(inputs["token_ids"][s.slot, :n_in], ref["token_ids"][:n_in], err_msg=f"t={t}")
        np.testing.assert_array_equal(inputs["dmel"][s.slot, :n_in], ref["dmel"][:n_in], err_msg=f"dMel t={t}")
        np.testing.assert_array_equal(inputs["patches"][s.slot], ref["patches"])
        np.testing.assert_array_equal(inputs["video_present"][s.slot], ref["video_present"])
    s.close()


def test_scheduler_capacity_join_leave_and_outputs(engine):
    ep = episode(1.0, seed=2)
    layout = engine.layout
    chunks = _chunks(ep, layout)

    def run(with_others: bool):
        sched = Scheduler(engine)
        a = sched.open_session(seed=11, session_id="a")
        others = []
        for t, chunk in enumerate(chunks):
            a.push(chunk)
            if with_others and t == 1:
                others = [sched.open_session(seed=5), sched.open_session(seed=6)]
                with pytest.raises(NoCapacityError, match="no capacity"):
                    sched.open_session()
            if with_others and t == 3:
                others[0].close()
                sched.open_session(seed=9).push(Chunk(text="late"))  # joins the freed slot
            for o in others:
                if not o.closed:
                    o.push(Chunk(audio=np.roll(chunk.audio, 100), text="x"))
            sched.tick()
        return a

    alone, crowded = run(False), run(True)
    assert len(alone.outputs) == len(chunks)
    for x, y in zip(alone.outputs, crowded.outputs):
        assert x.turn == y.turn
        np.testing.assert_array_equal(x.text_tokens, y.text_tokens)
        np.testing.assert_array_equal(x.mel, y.mel)
    tr = crowded.transcript()
    assert tr.mel.shape == (len(chunks) * layout.frames_per_turn, layout.n_mels)
    assert tr.mel_start == pytest.approx(layout.micro_turn_s)  # turn 0's output plays during turn 1
    wav = crowded.waveform(n_iter=2)
    assert wav.shape == (len(chunks) * layout.frames_per_turn * 200,) and np.isfinite(wav).all()
    assert crowded.id == "a" and engine.compilations() == 1


def test_hard_limit_is_a_clear_error(engine):
    c = load_config(config_path("tiny.py"), ["inference.context_policy=hard", "inference.max_session_seconds=0.6"])
    policy = ContextPolicy.from_config(c, engine.layout, max_block=17)
    assert policy.max_turns == 3 and policy.rows == 3 * engine.layout.positions_per_turn + 17
    policy.check_turn(2)
    with pytest.raises(SessionLimitError, match="hard context limit of 3 micro-turns"):
        policy.check_turn(3, "s1")


@pytest.mark.parametrize("sinks,ring", [(0, 7), (3, 5), (4, 9)])
def test_ring_rows_match_a_brute_force_simulation(sinks, ring):
    policy = ContextPolicy("sliding", sinks, window=0, ring=ring, scratch=4, max_turns=None)
    held = {}  # row -> position
    length, rs = 0, np.random.RandomState(0)
    for _ in range(12):
        size = int(rs.randint(1, 5))
        rows = np.asarray(policy.write_rows(np.array([length]), size, np.array([True])))[0]
        idle = np.asarray(policy.write_rows(np.array([length]), size, np.array([False])))[0]
        assert (idle >= sinks + ring).all()
        for i, r in enumerate(rows):
            held[int(r)] = length + i
        length += size
        want = np.full(policy.rows, -1)
        for r, p in held.items():
            want[r] = p
        np.testing.assert_array_equal(np.asarray(policy.row_positions(np.array([length])))[0], want)


def test_audio_only_forcing_is_full_forcing_with_the_models_own_text(engine):
    """`Chunk.force_audio_only`: the model hears the episode's model audio while its text is
    sampled. Replaying that run fully forced — the same audio, and as text inputs the samples it
    drew (slot i is fed slot i-1's sample) — must give the same mel output every micro-turn."""
    ep = episode(1.2, seed=7)
    layout, grid, _ = grid_and_window(engine.config, ep)
    text_sl = layout.block_slice(Kind.MODEL_TEXT)

    def run(force_for_turn, audio_only):
        sched = Scheduler(engine)
        s = sched.open_session(seed=3)
        for t, chunk in enumerate(_chunks(ep, layout)):
            chunk.force, chunk.force_audio_only = force_for_turn(t), audio_only
            s.push(chunk)
        sched.drain()
        outs = list(s.outputs)
        s.close()
        return outs

    heard = run(lambda t: pack_window(grid, t, 1), True)
    assert not any(o.forced for o in heard)
    targets = [pack_window(grid, t, 1)["text_targets"][text_sl] for t in range(len(heard))]
    assert any(not np.array_equal(o.text_tokens, tgt) for o, tgt in zip(heard, targets))  # text ran free

    def replay_force(t):
        one = {k: np.array(v) for k, v in pack_window(grid, t, 1).items()}
        prev = heard[t - 1].text_tokens[-1] if t else int(Control.NOTHING)
        one["token_ids"][text_sl] = np.concatenate([[prev], heard[t].text_tokens[:-1]])
        return one

    replay = run(replay_force, False)
    generated = run(lambda t: None, False)
    for t, (a, b) in enumerate(zip(heard, replay, strict=True)):
        np.testing.assert_allclose(a.mel, b.mel, rtol=0, atol=1e-6, err_msg=f"turn {t}")
    assert any(not np.allclose(a.mel, g.mel) for a, g in zip(heard, generated))  # the forced audio mattered


def test_self_audio_silence_is_forcing_silence_with_the_models_own_text():
    """`inference.self_audio=silence`: the model hears silence (dMel code 0) where its own voice
    would be. Replaying the run fully forced — silence at the model-audio inputs, its own samples
    as text inputs — gives the same mel output every micro-turn."""
    c = load_config(config_path("tiny.py"), ["inference.slots=1", "inference.self_audio=silence"])
    muted_engine = StreamEngine(c, InteractionModel(c, rngs=nnx.Rngs(0)))
    ep = episode(1.0, seed=9)
    layout, grid, _ = grid_and_window(c, ep)
    text_sl, audio_sl = layout.block_slice(Kind.MODEL_TEXT), layout.block_slice(Kind.MODEL_AUDIO)

    def run(force_for_turn):
        sched = Scheduler(muted_engine)
        s = sched.open_session(seed=4)
        for t, chunk in enumerate(_chunks(ep, layout)):
            chunk.force = force_for_turn(t)
            s.push(chunk)
        sched.drain()
        outs = list(s.outputs)
        s.close()
        return outs

    free = run(lambda t: None)

    def replay_force(t):
        one = {k: np.array(v) for k, v in pack_window(grid, t, 1).items()}
        prev = free[t - 1].text_tokens[-1] if t else int(Control.NOTHING)
        one["token_ids"][text_sl] = np.concatenate([[prev], free[t].text_tokens[:-1]])
        one["dmel"][audio_sl] = 0
        return one

    replay = run(replay_force)
    for t, (a, b) in enumerate(zip(free, replay, strict=True)):
        np.testing.assert_allclose(a.mel, b.mel, rtol=0, atol=1e-6, err_msg=f"turn {t}")


def test_transcript_of_a_session_with_no_output_yet_is_empty(engine):
    sched = Scheduler(engine)
    s = sched.open_session(seed=1, session_id="fresh")
    tr = s.transcript()  # before any tick (a server asks this of a client that just joined)
    assert list(tr.words) == [] and list(tr.events) == []
    assert s.delegations() == []
    s.close()


def test_heard_words_decode_the_user_transcript_across_micro_turns(engine):
    """`Session.heard_words` on hand-written heard tokens: a word split over two micro-turns, NOTHING
    between words, a word still unfinished at the end (no space yet) left out."""
    from interaction_jax.inference.session import TurnOutput
    from interaction_jax.streams.tokenizer import ByteTokenizer

    tok, N = ByteTokenizer(), int(Control.NOTHING)
    A = engine.layout.audio_positions  # 4 in the tiny layout
    rows = [[N] * A, tok.encode("re")[:2] + [N] * (A - 2), tok.encode("d ")[:2] + [N] * (A - 2),
            tok.encode("dog ") + [N] * (A - 4), tok.encode("ca")[:2] + [N] * (A - 2)]
    sched = Scheduler(engine)
    s = sched.open_session(seed=1, session_id="heard")
    for t, row in enumerate(rows):
        s.outputs.append(TurnOutput(t, np.zeros(4, np.int32), np.zeros((A, 4, 80), np.float32), 0.0,
                                    heard_tokens=np.asarray(row, np.int32)))
    words = s.heard_words()
    T = engine.layout.micro_turn_s
    assert [(w.text, round(w.time, 6)) for w in words] == [("red", round(2 * T, 6)), ("dog", round(3 * T, 6))]
    s.close()
