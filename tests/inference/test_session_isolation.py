"""One session's bad input never disturbs the others: push() validates, a failing fill closes one session.

Runs the real Scheduler and Session code over a stand-in engine (same inputs contract, no model),
so the checks need no compilation.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import config_path

from interaction_jax.config_lib import load_config
from interaction_jax.features.mel import FeatureParams
from interaction_jax.inference.session import Chunk, ChunkError, Scheduler, SessionClosedError
from interaction_jax.streams.layout import StreamLayout


class _Policy:
    def check_turn(self, turn: int, session_id: str = "") -> None:
        pass


class _FakeEngine:
    """The StreamEngine surface the scheduler uses; `step` records which slots were active."""

    def __init__(self, slots: int = 3):
        self.config = load_config(config_path("tiny.py"))
        self.layout = StreamLayout.from_config(self.config)
        self.feature_params = FeatureParams.from_config(self.config.features)
        self.slots, self.policy, self.steps, self.turn = slots, _Policy(), [], np.zeros(slots, np.int32)

    def empty_inputs(self) -> dict[str, np.ndarray]:
        spec = self.layout.packed_spec(1)
        out = {k: np.zeros((self.slots,) + shape, dtype) for k, (shape, dtype) in spec.items()
               if k in ("token_ids", "dmel", "patches", "video_present")}
        for k in ("active", "forced", "forced_audio"):
            out[k] = np.zeros(self.slots, bool)
        return out

    def reset(self, slot, seed, temperature=None, top_p=None) -> None:
        self.turn[slot] = 0

    def step(self, inputs):
        self.steps.append({k: v.copy() for k, v in inputs.items()})
        turn = self.turn.copy()
        self.turn += inputs["active"]
        A, F, M = self.layout.audio_positions, self.layout.frames_per_audio_position, self.feature_params.n_mels
        return {"text_tokens": np.zeros((self.slots, self.layout.model_text_slots), np.int32),
                "mel": np.zeros((self.slots, A, F, M), np.float32), "turn": turn}


@pytest.fixture()
def sched():
    return Scheduler(_FakeEngine())


def _pcm(sr: int = 16000, seconds: float = 0.2) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(round(sr * seconds))) / 7.0)).astype(np.float32)


@pytest.mark.parametrize("chunk, fragment", [
    (Chunk(audio=np.full(3200, np.nan, np.float32)), "NaN or infinite"),
    (Chunk(audio=_pcm(seconds=2.0)), "expected one micro-turn: 3200 samples"),
    (Chunk(audio=_pcm(), sample_rate=0), "sample_rate=0"),
    (Chunk(audio=_pcm(), sample_rate=16000.5), "sample_rate=16000.5"),
    (Chunk(audio=_pcm().reshape(2, -1)), "1-D array"),
    (Chunk(audio=np.array(["a"] * 3200)), "1-D array"),
    (Chunk(text=12345), "text must be a string"),
    (Chunk(text=["ok", 3]), "text must be a string"),
    (Chunk(video=np.zeros((8, 8), np.uint8)), "[H, W, 3] uint8"),
])
def test_bad_chunk_raises_for_its_session_only(sched, chunk, fragment):
    good, bad = sched.open_session(seed=1), sched.open_session(seed=2)
    good.push(Chunk(audio=_pcm()))
    with pytest.raises(ChunkError, match=bad.id) as e:
        bad.push(chunk)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not bad.pending  # nothing queued
    outs = sched.tick()
    assert list(outs) == [good.id]  # the good session's micro-turn ran, in step
    bad.push(Chunk(audio=_pcm()))  # the bad session is still usable
    assert set(sched.tick()) == {bad.id}


def test_partial_chunk_only_last():
    sched = Scheduler(_FakeEngine())
    s = sched.open_session()
    s.push(Chunk(audio=_pcm()))
    s.push(Chunk(audio=_pcm()[:1000]))  # a short last chunk is fine
    with pytest.raises(ChunkError, match="only the session's last audio chunk"):
        s.push(Chunk(audio=_pcm()))
    s.push(Chunk())  # silence (no audio) after it is fine
    sched.drain()
    assert len(s.outputs) == 3


def test_other_rates_are_one_micro_turn_of_their_rate(sched):
    s = sched.open_session()
    s.push(Chunk(audio=_pcm(48000), sample_rate=48000))
    with pytest.raises(ChunkError, match="expected one micro-turn: 9600 samples"):
        s.push(Chunk(audio=_pcm(16000, 0.8), sample_rate=48000))


def test_a_failing_fill_closes_only_that_session(sched, monkeypatch):
    a, b, c = (sched.open_session(seed=i) for i in range(3))
    for s in (a, b, c):
        s.push(Chunk(audio=_pcm(), text="hi"))

    def boom(audio, sr=None):
        raise RuntimeError("feature path failed")

    monkeypatch.setattr(b.features, "push", boom)
    outs = sched.tick()
    assert set(outs) == {a.id, c.id}
    assert b.closed and isinstance(b.error, RuntimeError) and sched.failures[b.id] is b.error
    step = sched.engine.steps[-1]
    assert not step["active"][b.slot] and not step["token_ids"][b.slot].any()  # its row is idle
    with pytest.raises(SessionClosedError, match="feature path failed"):
        b.push(Chunk())
    assert a.turns_fed == c.turns_fed == 1
