"""Offline speech rendering with espeak-ng (the `espeakng-loader` wheel, through ctypes).

Synthetic interaction tasks need speech with exact word times and no network or system
package, so we drive libespeak-ng directly: synchronous synthesis, audio and WORD events
delivered to a Python callback. espeak-ng keeps global state, so one process-wide lock guards
every call, and the library is loaded fresh per synthesis so renders are reproducible
(see `_Engine`). Audio is resampled 22.05 kHz -> `sample_rate`
with librosa; renders are cached (LRU) because tasks reuse phrases.

Word times: a word starts at its WORD event and ends where the next word starts (the last one
ends where the audio stops being louder than a small threshold, so trailing silence is not
counted as speech).
"""

from __future__ import annotations

import _ctypes
import collections
import ctypes
import dataclasses
import threading

import numpy as np

from interaction_jax.data.episode import Word

# ---- espeak-ng C API constants (speak_lib.h) ------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_RAND_SEED = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """`espeak_EVENT`: six 32-bit ints, a pointer, an 8-byte union (40 bytes on 64-bit)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the input text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of this synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclasses.dataclass(frozen=True)
class VoiceSpec:
    """An espeak-ng voice: base language voice, variant (m1..m7, f1..f5, ...), rate (wpm), pitch 0-100."""

    name: str = "en-us"
    variant: str = ""
    rate_wpm: int = 170
    pitch: int = 50
    pitch_range: int = 50

    @property
    def espeak_name(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name

    def jitter(self, rng: np.random.Generator, rate_steps: int = 3, pitch_steps: int = 3) -> VoiceSpec:
        """A seeded small perturbation (rate +-5 wpm steps, pitch +-2 steps): speakers vary per episode.

        Quantised so a few dozen variants per voice exist and the render cache keeps hitting.
        """
        return dataclasses.replace(
            self,
            rate_wpm=int(self.rate_wpm + 5 * rng.integers(-rate_steps, rate_steps + 1)),
            pitch=int(np.clip(self.pitch + 2 * rng.integers(-pitch_steps, pitch_steps + 1), 0, 100)),
        )


# Clearly distinct defaults: low male user, high female model, a third male for others.
USER_VOICE = VoiceSpec("en-us", "m3", rate_wpm=165, pitch=35)
MODEL_VOICE = VoiceSpec("en-us", "f2", rate_wpm=175, pitch=70)
OTHER_VOICE = VoiceSpec("en", "m1", rate_wpm=155, pitch=50)


@dataclasses.dataclass(frozen=True)
class RenderedSpeech:
    """Mono float32 audio at `sample_rate` and its words with times relative to the audio start."""

    audio: np.ndarray
    words: tuple[Word, ...]
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate

    @property
    def speech_end(self) -> float:
        """End of the last word (trailing silence excluded)."""
        return self.words[-1].end if self.words else 0.0


class _Engine:
    """The espeak-ng library; every method must be called with `_LOCK` held.

    espeak-ng keeps synthesis state in function-static variables (e.g. the pitch-flutter
    phase) that no API resets, so a render would depend on what was synthesised before it.
    We therefore load the library fresh for every synthesis and unload it afterwards
    (about 10 ms): a render then depends only on (text, voice), in any process.
    """

    def __init__(self):
        try:
            import espeakng_loader

            self._lib_path = espeakng_loader.get_library_path()
            self._data_path = espeakng_loader.get_data_path()
        except Exception as e:  # ImportError: the wheel is missing
            raise RuntimeError(
                f"speech: cannot find espeak-ng ({e}); install it with `pip install espeakng-loader`"
            ) from e
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []  # (text_position, length, audio ms)
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: C holds the pointer
        lib, self.native_rate = self._load()  # fail early with a clear error
        self._unload(lib)

    def _load(self) -> tuple[ctypes.CDLL, int]:
        try:
            lib = ctypes.CDLL(self._lib_path)
        except OSError as e:
            raise RuntimeError(f"speech: cannot load espeak-ng from {self._lib_path}: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        data = self._data_path.encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            self._unload(lib)
            raise RuntimeError(
                f"speech: espeak_Initialize failed (returned {rate}) with data dir {self._data_path}"
            )
        lib.espeak_SetSynthCallback(self._callback)
        return lib, rate

    @staticmethod
    def _unload(lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)

    def _on_synth(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self._events.append((ev.text_position, ev.length, ev.audio_position))
            i += 1
        return 0

    def synth(self, text: str, voice: VoiceSpec) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Native-rate int16 audio and WORD events for `text`."""
        lib, _ = self._load()
        try:
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise ValueError(f"speech: espeak-ng has no voice {voice.espeak_name!r}")
            lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate_wpm), 0)
            lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
            lib.espeak_SetParameter(_PARAM_RANGE, int(voice.pitch_range), 0)
            lib.espeak_ng_SetRandSeed(_RAND_SEED)
            self._chunks, self._events = [], []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"speech: espeak_Synth failed with error {err} for text {text!r}")
            lib.espeak_Synchronize()
        finally:
            self._unload(lib)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._events)


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def _char_offsets(text: str) -> list[tuple[int, int, str]]:
    """(start, end, token) character spans of the whitespace-separated tokens of `text`."""
    spans, pos = [], 0
    for tok in text.split():
        start = text.index(tok, pos)
        pos = start + len(tok)
        spans.append((start, pos, tok))
    return spans


def _speech_end(audio: np.ndarray, sr: int, threshold: float = 0.01) -> float:
    """Time where the audio last exceeds `threshold` (trailing silence trimmed)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return float(loud[-1] + 1) / sr if loud.size else 0.0


class SpeechRenderer:
    """Renders text to speech with word times; thread-safe, with an LRU cache of renders."""

    def __init__(self, sample_rate: int = 16000, cache_size: int = 2048):
        self.sample_rate = int(sample_rate)
        self.cache_size = int(cache_size)
        self._cache: collections.OrderedDict[tuple[str, VoiceSpec], RenderedSpeech]
        self._cache = collections.OrderedDict()
        self._cache_lock = threading.Lock()

    def render(self, text: str, voice: VoiceSpec = USER_VOICE) -> RenderedSpeech:
        """Speech for `text` in `voice` (cached). Raises RuntimeError if espeak-ng cannot load."""
        text = " ".join(text.split())
        if not text:
            raise ValueError("speech: cannot render empty text")
        key = (text, voice)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        out = self._render_uncached(text, voice)
        with self._cache_lock:
            self._cache[key] = out
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def _render_uncached(self, text: str, voice: VoiceSpec) -> RenderedSpeech:
        import librosa

        with _LOCK:
            eng = _engine()
            raw, events = eng.synth(text, voice)
            native = eng.native_rate
        audio = raw.astype(np.float32) / 32768.0
        if native != self.sample_rate and audio.size:
            audio = librosa.resample(audio, orig_sr=native, target_sr=self.sample_rate).astype(np.float32)
        words = self._align_words(text, events, _speech_end(audio, self.sample_rate))
        audio = np.ascontiguousarray(audio)
        return RenderedSpeech(audio=audio, words=tuple(words), sample_rate=self.sample_rate)

    @staticmethod
    def _align_words(text: str, events: list[tuple[int, int, int]], end_s: float) -> list[Word]:
        """Maps WORD events to the text's whitespace tokens (first event per token wins)."""
        spans = _char_offsets(text)
        starts: dict[int, float] = {}
        for text_pos, _length, ms in events:
            c = text_pos - 1  # espeak positions are 1-based
            for k, (s, e, _tok) in enumerate(spans):
                if s <= c < e and k not in starts:
                    starts[k] = ms / 1000.0
                    break
        # Tokens espeak did not announce (pure punctuation) share the previous start.
        times, last = [], 0.0
        for k in range(len(spans)):
            last = max(last, starts.get(k, last))
            times.append(last)
        bounds = times + [max(end_s, times[-1] + 0.05)] if times else []
        # espeak may time several short words together ("in the"): split their span evenly.
        k = 0
        while k < len(times):
            j = k
            while j + 1 < len(times) and times[j + 1] == times[k]:
                j += 1
            step = (bounds[j + 1] - times[k]) / (j - k + 1)
            for i in range(k, j + 1):
                bounds[i] = times[k] + (i - k) * step
            k = j + 1
        words = [Word(tok, bounds[k], bounds[k + 1]) for k, (_s, _e, tok) in enumerate(spans)]
        return words


def place(
    track: np.ndarray, rendered: RenderedSpeech, start_s: float, sr: int, gain: float = 1.0
) -> list[Word]:
    """Mixes `rendered` into `track` (in place) from `start_s`; returns its words in track time.

    Audio past the end of the track is dropped, and so are words that would start past it
    (a word cut by the end is clipped to the track end).
    """
    if rendered.sample_rate != sr:
        raise ValueError(f"place: rendered speech is {rendered.sample_rate} Hz but the track is {sr} Hz")
    n0 = int(round(start_s * sr))
    if n0 < 0:
        raise ValueError(f"place: start_s must be >= 0, got {start_s}")
    n = max(0, min(rendered.audio.size, track.size - n0))
    if n:
        track[n0 : n0 + n] += gain * rendered.audio[:n]
    end_s = track.size / sr
    return [
        Word(w.text, start_s + w.start, min(start_s + w.end, end_s))
        for w in rendered.words
        if start_s + w.start < end_s
    ]


_DEFAULT: SpeechRenderer | None = None


def default_renderer(sample_rate: int = 16000) -> SpeechRenderer:
    """A shared renderer (one cache per process) for the common 16 kHz case."""
    global _DEFAULT
    if _DEFAULT is None or _DEFAULT.sample_rate != sample_rate:
        _DEFAULT = SpeechRenderer(sample_rate)
    return _DEFAULT
