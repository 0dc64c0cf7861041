"""Grading what the model *said* (its audio) instead of what it wrote, through a pluggable ASR.

The default grading reads the model's text stream. With `--asr=package.module:function`, the
model's generated mel is turned into a waveform (Griffin-Lim, on the episode clock) and
handed to `function(audio: np.ndarray, sample_rate: int) -> list[Word | (text, start, end)]`,
any recogniser or keyword spotter installed on the machine (nothing here downloads a model);
its timed words are graded by the same windows as a column "<system> (spoken)". Control
tokens (DELEGATE, utterance marks) are not audible, so only the spoken-word windows mean much.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

import numpy as np

from interaction_jax.data.episode import Word
from interaction_jax.errors import UserError
from interaction_jax.eval.runner import EpisodeRun
from interaction_jax.features.mel import FeatureParams, mel_to_audio

Transcriber = Callable[[np.ndarray, int], Sequence]


class ASRError(UserError, ValueError):
    """A bad --asr spec or a transcriber returning something that is not timed words."""


def load_transcriber(spec: str) -> Transcriber:
    """`package.module:function` -> the function (clear errors for a bad spec)."""
    if ":" not in spec:
        raise ASRError(f"--asr={spec!r}: expected 'package.module:function'")
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ASRError(f"--asr={spec!r}: cannot load it ({e})") from e
    if not callable(fn):
        raise ASRError(f"--asr={spec!r}: {fn_name} is not callable")
    return fn


def _as_word(w, spec: str) -> Word:
    if isinstance(w, Word):
        return w
    try:
        text, start, end = w
        return Word(str(text), float(start), float(end))
    except (TypeError, ValueError) as e:
        raise ASRError(f"transcriber {spec}: expected Word or (text, start, end), got {w!r}") from e


def episode_audio(run: EpisodeRun, params: FeatureParams, n_iter: int = 32) -> np.ndarray:
    """The model's speech over the whole episode (silence before its first output window)."""
    sr = params.sample_rate
    n = int(round(run.duration * sr))
    out = np.zeros(n, np.float32)
    if run.mel is None or len(run.mel) == 0:
        return out
    wav = mel_to_audio(run.mel, params, n_iter=n_iter, length=len(run.mel) * params.hop_length)
    k0 = int(round(run.mel_start * sr))
    m = max(0, min(len(wav), n - k0))
    out[k0 : k0 + m] = wav[:m]
    return out


def spoken_runs(runs: Sequence[EpisodeRun], transcriber: Transcriber, params: FeatureParams, *,
                spec: str = "asr", n_iter: int = 32) -> list[EpisodeRun]:
    """Each run's audio through the transcriber -> runs whose words are what was heard."""
    out = []
    for run in runs:
        words = [_as_word(w, spec) for w in transcriber(episode_audio(run, params, n_iter), params.sample_rate)]
        out.append(dataclasses.replace(run, words=sorted(words, key=lambda w: w.start), events=[], delegations=[],
                                       system=f"{run.system} (spoken)"))
    return out
