"""BackgroundQueue: the live background-slot tokens equal what training packing produces."""

import numpy as np
import pytest

from interaction_jax.background import BackgroundQueue, BackgroundRunner, DelegationEvent, ToolBackend
from interaction_jax.data.episode import BackgroundEvent, Episode
from interaction_jax.streams import text_streams
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.streams.pack import EpisodeGrid
from interaction_jax.streams.tokenizer import ByteTokenizer, Control

from .helpers import package, wait_for

TOK = ByteTokenizer()
N, S, E = int(Control.NOTHING), int(Control.BG_START), int(Control.BG_END)


def _ev(kind, job, t, text=""):
    return DelegationEvent(kind, job, "s", t, text)


def _live(layout, n_turns, events, **kw) -> np.ndarray:
    """Feeds each event in the micro-turn of its time, takes one row of slots per micro-turn."""
    q = BackgroundQueue(TOK, **kw)
    rows = []
    for t in range(n_turns):
        q.push([e for e in events if layout.input_turn(e.time) == t])
        rows.append(q.take(layout.background_slots))
    return np.asarray(rows, np.int32).reshape(n_turns, layout.background_slots)


def _chunks(job, t, text, size=3):
    return [_ev("chunk", job, t, text[i : i + size]) for i in range(0, len(text), size)] + [_ev("done", job, t, text)]


EPISODE_BG = [
    BackgroundEvent("request", 0.5, "what is the weather in paris", 1),
    BackgroundEvent("result", 1.1, "sunny and 18 degrees", 1),
    BackgroundEvent("error", 1.15, "cannot serve 'x'", 2),
    BackgroundEvent("result", 3.0, "42", 3),
]


@pytest.mark.parametrize("stream", [True, False])
def test_live_tokens_equal_packing(stream):
    layout = StreamLayout()
    episode = Episode("bg", duration=5.0, background=list(EPISODE_BG))
    n = layout.num_turns(episode.duration)
    packed, overflow = text_streams.fill_slots(
        text_streams.background_tokens(episode, layout, TOK), n, layout.background_slots
    )
    assert overflow == 0
    grid = EpisodeGrid.from_episode(episode, layout, TOK)  # the training packing itself
    np.testing.assert_array_equal(grid.background, packed)
    events = _chunks(1, 1.1, "sunny and 18 degrees") + [_ev("error", 2, 1.15, "cannot serve 'x'")]
    events += _chunks(3, 3.0, "42")
    np.testing.assert_array_equal(_live(layout, n, events, stream=stream), packed)


def test_whole_result_mode_equals_packing_when_chunks_arrive_early():
    """stream=False holds streamed chunks back until `done`, i.e. exactly the training distribution."""
    layout = StreamLayout(background_slots=2)
    episode = Episode("bg", duration=4.0, background=[BackgroundEvent("result", 2.5, "the answer", 7)])
    n = layout.num_turns(4.0)
    packed, _ = text_streams.fill_slots(text_streams.background_tokens(episode, layout, TOK), n, 2)
    events = [_ev("chunk", 7, 0.3, "the "), _ev("chunk", 7, 1.0, "answer"), _ev("done", 7, 2.5, "the answer")]
    np.testing.assert_array_equal(_live(layout, n, events, stream=False), packed)
    streamed = _live(layout, n, events, stream=True)
    assert streamed[1].tolist() == [S] + TOK.encode("t")  # streaming starts at the first chunk
    assert TOK.decode(streamed.reshape(-1), keep_control=True) == "<BG_START>the answer<BG_END>"


def test_slot_bound_and_overflow():
    q = BackgroundQueue(TOK)
    q.push(_ev("done", 1, 0.0, "0123456789"))
    assert len(q) == 12
    rows = [q.take(4) for _ in range(4)]
    assert rows[0] == [S] + TOK.encode("012")
    assert rows[2] == TOK.encode("789") + [E]
    assert rows[3] == [N] * 4 and len(q) == 0
    assert q.take(0) == []


def test_jobs_never_interleave():
    q = BackgroundQueue(TOK)
    q.push([_ev("chunk", 1, 0.0, "aa"), _ev("done", 2, 0.1, "bb")])
    assert q.busy
    assert q.take(8) == [S] + TOK.encode("aa") + [N] * 5  # job 2 waits behind job 1
    q.push(_ev("done", 1, 0.5, "aa"))
    assert q.take(8) == [E, S] + TOK.encode("bb") + [E, N, N, N]
    assert not q.busy


def test_errors_and_cancellation():
    q = BackgroundQueue(TOK)
    q.push([_ev("chunk", 1, 0.0, "par"), _ev("error", 1, 0.2, "timed out")])
    expect = [S] + TOK.encode("par") + [E, int(Control.BG_ERROR)] + TOK.encode("timed out") + [E]
    assert q.take(20) == expect + [N] * (20 - len(expect))
    q.push([_ev("chunk", 2, 0.0, "x"), _ev("cancelled", 2, 0.1), _ev("cancelled", 3, 0.1)])
    assert q.take(4) == [S] + TOK.encode("x") + [E, N]  # a started result is closed; job 3 leaves no trace
    whole = BackgroundQueue(TOK, stream=False)
    whole.push([_ev("chunk", 4, 0.0, "par"), _ev("error", 4, 0.2, "oops")])
    assert TOK.decode(whole.take(10), keep_control=True) == "<BG_ERROR>oops<BG_END>"
    whole.push([_ev("chunk", 5, 0.0, "par"), _ev("cancelled", 5, 0.2)])
    assert len(whole) == 0


def test_runner_to_slots_end_to_end():
    runner = BackgroundRunner(ToolBackend(chunk_chars=2), max_concurrent=1, timeout_s=10)  # fixed result order
    runner.submit(package("what is the population of tokyo"))
    runner.submit(package("what is 5 times 5"))
    q = BackgroundQueue(TOK)
    q.push(wait_for(runner, 2))
    tokens = []
    while len(q):
        tokens += q.take(4)
    text = TOK.decode(tokens, keep_control=True)
    assert text == "<BG_START>about 14 million people<BG_END><BG_START>25<BG_END>"
