"""Audio-based fd measures and transcript times: on waveforms with speech at known times, the stop latency,
response latency and word audio times equal those times within one VAD frame (no model involved)."""

import numpy as np

from interaction_jax.data.episode import Episode, GradingWindow, Word
from interaction_jax.eval import audio_timing as at
from interaction_jax.eval import benchmarks as bm
from interaction_jax.eval.runner import EpisodeRun

SR = 16000
FRAME = 0.02  # one VAD frame
TOL = FRAME + 1e-6


def _signal(bursts, duration, level=0.3, seed=0):
    """Tone bursts (start_s, end_s) on a -80 dBFS noise floor (an independent stand-in for speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * SR)) / SR
    x = rng.normal(0.0, 1e-4, t.size)
    for a, b in bursts:
        m = (t >= a) & (t < b)
        x[m] += level * np.sin(2 * np.pi * 230 * t[m]) * (1.0 + 0.3 * np.sin(2 * np.pi * 4 * t[m]))
    return x.astype(np.float32)


def _items(episodes, runs):
    return bm.graded(episodes, runs, {ep.episode_id: [True] * len(ep.grading) for ep in episodes})


def test_fd_audio_measures_equal_the_known_speech_times():
    # interruption at 2.0 s: the model's audio runs 1.0-2.34 s (its text words end at 1.9 s, as the text clock does)
    ep_i = Episode("i", 6.0, task="interruption", grading=[GradingWindow("stop", 2.0, 2.8)])
    run_i = EpisodeRun("i", "interruption", 6.0, [Word("one", 1.0, 1.4), Word("two", 1.5, 1.9)],
                       speech=at.speech_segments(_signal([(1.0, 2.34)], 6.0), SR))
    # turn-taking question ends at 3.0 s: the answer is heard from 3.47 s (its text slot says 3.3 s)
    ep_t = Episode("t", 6.0, task="turntaking", grading=[GradingWindow("silent", 1.0, 3.0),
                                                         GradingWindow("speak", 3.0, 5.0, "yes")])
    run_t = EpisodeRun("t", "turntaking", 6.0, [Word("yes", 3.3, 3.6)],
                       speech=at.speech_segments(_signal([(3.47, 4.2)], 6.0), SR))
    m = bm.score_items("fd", _items([ep_i, ep_t], [run_i, run_t]))
    assert abs(m["interruption_stop_latency_median_s_audio"] - 0.34) <= TOL
    assert m["interruption_stop_rate_audio"] == 1.0 and m["interruption_speaking_at_onset_audio"] == 1
    assert abs(m["turn_taking_latency_median_s_audio"] - 0.47) <= TOL
    assert m["turn_taking_takeover_rate_audio"] == 1.0 and m["audio_examples"] == 2
    # the text-stream measures beside them are on the text clock
    assert abs(m["turn_taking_latency_median_s"] - 0.3) < 1e-9 and m["interruption_speaking_at_onset"] == 0
    table = bm.table({"model": {"fd": m}})
    assert "stop latency median (audio)" in table and "response latency median (audio)" in table


def test_fd_audio_speech_not_stopped_and_no_audio():
    ep = Episode("i", 6.0, task="interruption", grading=[GradingWindow("stop", 2.0, 2.8)])
    talks_on = EpisodeRun("i", "interruption", 6.0, [], speech=at.speech_segments(_signal([(1.0, 4.0)], 6.0), SR))
    m = bm.score_items("fd", _items([ep], [talks_on]))
    assert m["interruption_stop_rate_audio"] == 0.0 and m["interruption_stop_latency_median_s_audio"] is None
    no_audio = bm.score_items("fd", _items([ep], [EpisodeRun("i", "interruption", 6.0, [])]))  # e.g. the cascade
    assert no_audio["interruption_stop_rate_audio"] is None and no_audio["audio_examples"] == 0


def test_run_speech_times_the_griffin_lim_audio_of_the_mel():
    from interaction_jax.features.mel import FeatureParams, log_mel

    p = FeatureParams()
    bursts = [(0.5, 1.2), (2.0, 2.6)]
    mel = log_mel(_signal(bursts, 3.0), p)
    run = EpisodeRun("r", "interruption", 4.0, [], mel=mel, mel_start=0.4)  # output starts 0.4 s in
    segs = at.run_speech(run, p, n_iter=8)
    assert len(segs) == 2
    for (a, b), (ea, eb) in zip(segs, bursts, strict=True):
        assert abs(a - (ea + 0.4)) <= TOL and abs(b - (eb + 0.4)) <= TOL, segs
    assert at.run_speech(EpisodeRun("r", "x", 1.0, []), p) is None


def test_stream_transcript_gets_audio_word_times():
    from interaction_jax.stream import transcript_json

    wav = _signal([(1.0, 1.6), (3.0, 3.4)], 5.0)
    words = [Word("hello", 0.9, 1.1), Word("you", 1.2, 1.35), Word("yes", 2.85, 3.0), Word("zz", 4.5, 4.6)]
    out = transcript_json(words, [(0.0, 5)], wav, SR)
    w = out["words"]
    assert [x["text"] for x in w] == ["hello", "you", "yes", "zz"]
    assert [(x["start"], x["end"]) for x in w] == [(0.9, 1.1), (1.2, 1.35), (2.85, 3.0), (4.5, 4.6)]
    assert abs(w[0]["audio_start"] - 1.0) <= TOL and abs(w[1]["audio_end"] - 1.6) <= TOL
    assert w[0]["audio_end"] == w[1]["audio_start"]  # one segment, shared by characters
    assert abs(w[2]["audio_start"] - 3.0) <= TOL and abs(w[2]["audio_end"] - 3.4) <= TOL
    assert w[3]["audio_start"] is None and w[3]["audio_end"] is None  # never voiced
    assert len(out["speech"]) == 2 and out["tokens"] == [{"time": 0.0, "id": 5}]
