"""Streaming user-audio features: 200 ms chunks in, exactly the dMel codes packing would give.

`pack.EpisodeGrid` computes log-mel on the whole clip (centred frames, reflect padding of
n_fft/2 at the start) and gives micro-turn t the frames [N t - d, N t + N - d) (d = the causal
frame delay, 1 for the dMel settings): the last frame of turn t is the one whose analysis
window *ends* at the turn's end. `StreamingFeatures` produces the same frames from the audio
received so far: frame k is taken from padded-signal samples [k hop, k hop + n_fft) with the
same start reflection, the same librosa STFT / filterbank / log10 / dMel calls, and the few
look-ahead samples of the zero-padded FFT frame (beyond the Hann window of win_length, so
multiplied by zero) filled with zeros. At 16 kHz the codes equal pack_window's bit for bit
(tested); other rates are resampled by a soxr stream, which is continuous across chunks but
lags by the resampler delay (missing samples at a turn's end are zeros).

Only the tail of the audio that later frames still need is kept, so memory is constant.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.features import mel as mel_lib
from interaction_jax.features.audio import ensure_audio
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.streams.pack import causal_frame_delay


class StreamingFeatures:
    """One session's user-audio front end: `push(audio, sr)` per micro-turn -> dMel [A, F, M] uint8."""

    def __init__(self, layout: StreamLayout, params: mel_lib.FeatureParams | None = None):
        self.layout = layout
        self.params = params or mel_lib.FeatureParams()
        p = self.params
        if abs(1000.0 * p.hop_length / p.sample_rate - layout.frame_ms) > 1e-6:
            raise ValueError(f"layout.frame_ms={layout.frame_ms} but the feature hop is {p.hop_length} samples")
        self.delay = causal_frame_delay(p.win_length, p.hop_length)
        self.turn = 0
        self._audio = np.zeros(0, np.float32)  # samples [self._start, self._start + len)
        self._start = 0
        self._received = 0  # samples at the model rate received so far
        self._head = np.zeros(0, np.float32)  # the first n_fft/2 + 1 samples (start reflection)
        self._resampler = None
        self._rate: int | None = None

    def _resample(self, audio: np.ndarray, sr: int) -> np.ndarray:
        if self._rate is not None and sr != self._rate:
            raise ValueError(f"session audio: sample rate changed mid-stream from {self._rate} to {sr} Hz")
        self._rate = sr
        if sr == self.params.sample_rate:
            return audio
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(sr, self.params.sample_rate, 1, dtype="float32", quality="HQ")
        return self._resampler.resample_chunk(audio).astype(np.float32)

    def push(self, audio: np.ndarray | None, sr: int | None = None) -> np.ndarray:
        """Adds one micro-turn of audio (None = silence) and returns this turn's dMel codes [A, F, M]."""
        p, N, F = self.params, self.layout.frames_per_turn, self.layout.frames_per_audio_position
        sr = int(sr or p.sample_rate)
        if audio is None:
            audio = np.zeros(int(round(self.layout.micro_turn_s * sr)), np.float32)
        audio = ensure_audio(audio, sr, sr, name=f"session audio (turn {self.turn})")  # checks, no resample
        x = self._resample(audio, sr)
        self._audio = np.concatenate([self._audio, x])
        self._received += len(x)
        if len(self._head) <= p.n_fft // 2:
            self._head = np.concatenate([self._head, x])[: p.n_fft // 2 + 1]
        t = self.turn
        k0, k1 = N * t - self.delay, N * t + N - self.delay  # frames of this turn
        first = max(k0, 0)
        logmel = np.full((k1 - k0, p.n_mels), p.dmel_min, np.float32)
        if k1 > first:
            logmel[first - k0 :] = self._frames(first, k1)
        self.turn += 1
        # keep only what the next turn's first frame still reads
        keep_from = (N * self.turn - self.delay) * p.hop_length - p.n_fft // 2
        drop = max(0, keep_from - self._start)
        self._audio, self._start = self._audio[drop:], self._start + drop
        codes = mel_lib.dmel_encode(logmel, p)
        return codes.reshape(self.layout.audio_positions, F, p.n_mels)

    def _frames(self, k0: int, k1: int) -> np.ndarray:
        """log-mel frames [k0, k1) exactly as `mel_lib.log_mel` computes them on the whole clip."""
        import librosa

        p = self.params
        pad = p.n_fft // 2
        lo, hi = k0 * p.hop_length - pad, (k1 - 1) * p.hop_length - pad + p.n_fft
        idx = np.arange(lo, hi)
        seg = np.zeros(hi - lo, np.float32)
        refl = idx < 0
        if refl.any():
            if len(self._head) <= pad:
                raise ValueError(f"session audio: the first micro-turn needs more than {pad} samples")
            seg[refl] = self._head[-idx[refl]]
        have = (idx >= 0) & (idx < self._received)
        seg[have] = self._audio[idx[have] - self._start]
        spec = np.abs(
            librosa.stft(
                seg, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window="hann", center=False
            )
        )
        mel = mel_lib.mel_filterbank(p) @ spec
        out = np.log10(np.maximum(mel, p.floor)).T.astype(np.float32)
        assert out.shape[0] == k1 - k0, (out.shape, k0, k1)
        return out
