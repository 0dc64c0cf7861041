"""Spoken-output grading: audio reconstruction on the episode clock and the transcriber plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from interaction_jax.data import tasks
from interaction_jax.data.episode import GradingWindow, Word
from interaction_jax.eval.grading import grade_window
from interaction_jax.eval.runner import EpisodeRun
from interaction_jax.eval.spoken import ASRError, episode_audio, load_transcriber, spoken_runs
from interaction_jax.features.mel import FeatureParams, log_mel

P = FeatureParams()


def test_episode_audio_puts_the_model_speech_on_the_episode_clock():
    ep = tasks.generate("turntaking", 5, duration_s=8.0)
    start = 0.4  # as if the first output window started here
    mel = log_mel(ep.model_audio[int(start * P.sample_rate) :], P)
    run = EpisodeRun(ep.episode_id, ep.task, ep.duration, [], mel=mel, mel_start=start)
    audio = episode_audio(run, P, n_iter=8)
    assert audio.shape == (ep.num_samples,)
    assert np.abs(audio[: int(start * P.sample_rate)]).max() == 0.0
    speech = np.zeros(ep.num_samples, bool)  # independent reference: the episode's own word times
    for w in ep.model_words:
        speech[int(w.start * P.sample_rate) : int(w.end * P.sample_rate)] = True
    speech[: int(start * P.sample_rate)] = False
    quiet = ~speech
    quiet[: int(start * P.sample_rate)] = False
    rms = lambda m: float(np.sqrt(np.mean(audio[m] ** 2)))  # noqa: E731
    assert rms(speech) > 10 * rms(quiet)


def fake_asr(audio, sample_rate):
    """Hears 'apple' at 4.0 s if there is any sound; returns (text, start, end) tuples."""
    return [("apple", 4.0, 4.3)] if np.abs(audio).max() > 0 else []


def test_spoken_runs_grade_what_the_transcriber_heard():
    mel = np.full((100, P.n_mels), 0.0, np.float32)  # loud frames: non-silent audio
    run = EpisodeRun("e", "timespeak", 8.0, [Word("banana", 4.0, 4.2)], events=[(4.0, "SPEECH_START")], mel=mel,
                     mel_start=0.2)
    (spoken,) = spoken_runs([run], fake_asr, P, n_iter=4)
    assert spoken.system == "model (spoken)" and spoken.events == []
    window = GradingWindow("speak", 3.6, 5.0, "apple")
    assert grade_window(spoken, window).passed and not grade_window(run, window).passed
    silent = EpisodeRun("e", "timespeak", 8.0, [], mel=None)
    assert spoken_runs([silent], fake_asr, P)[0].words == []


def test_bad_transcribers_fail_clearly():
    with pytest.raises(ASRError, match="package.module:function"):
        load_transcriber("nocolon")
    with pytest.raises(ASRError, match="cannot load"):
        load_transcriber("os:no_such_function")
    with pytest.raises(ASRError, match="not callable"):
        load_transcriber("os:sep")
    run = EpisodeRun("e", "t", 2.0, [], mel=None)
    with pytest.raises(ASRError, match="expected Word or"):
        spoken_runs([run], lambda a, sr: ["just text"], P)
