"""serve.warm_up: every host-side path of a micro-turn runs once at start-up, and nothing of it stays.

The first real tick must not pay for the STFT's or the vocoder's first call (seconds of lazy
imports and caches). Runs over the stand-in engine of test_session_isolation (no compilation).
"""

from __future__ import annotations

import numpy as np
from test_session_isolation import _FakeEngine, _pcm

from interaction_jax.features import mel as mel_lib
from interaction_jax.inference.features import StreamingFeatures
from interaction_jax.inference.session import Chunk, Scheduler
from interaction_jax.serve import warm_up


def test_warm_up_runs_the_feature_path_and_the_vocoder_once_and_leaves_no_session(monkeypatch):
    calls = {"features": 0, "vocoder": 0}
    push, vocode = StreamingFeatures.push, mel_lib.mel_to_audio

    def counting_push(self, audio, sr=None):
        calls["features"] += audio is not None and len(audio) > 0
        return push(self, audio, sr)

    def counting_vocoder(*args, **kwargs):
        calls["vocoder"] += 1
        return vocode(*args, **kwargs)

    monkeypatch.setattr(StreamingFeatures, "push", counting_push)
    monkeypatch.setattr(mel_lib, "mel_to_audio", counting_vocoder)
    engine = _FakeEngine(slots=2)
    warm_up(engine)
    assert calls == {"features": 1, "vocoder": 1}  # one micro-turn of real audio, STFT and vocoder
    assert [bool(s["active"].any()) for s in engine.steps] == [False, True]  # the compile tick, then one turn
    sched = Scheduler(engine)  # a client's scheduler: both slots free, the first session starts at turn 0
    a, b = sched.open_session(seed=1), sched.open_session(seed=2)
    a.push(Chunk(audio=_pcm()))
    b.push(Chunk(audio=_pcm()))
    outs = sched.tick()
    assert {int(o.turn) for o in outs.values()} == {0} and np.array_equal(engine.turn, [1, 1])
