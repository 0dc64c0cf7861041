"""The turn-based cascade baseline, as deployed today: VAD end-of-turn, then a turn-based model answers.

Why: the micro-turn model's claim is that it needs no turn-detection harness. This baseline is
that harness with *best-case content*, graded by the same benchmarks (`benchmarks.score`), so
the table isolates what the turn structure alone costs (CueSpeak, timed speech, latency).

Pipeline, per episode (deterministic, no model):

1. **VAD on the user channel** (everything the model hears: user, other talkers, background
   speech, noise). Frames of `frame_ms` (30 ms) are classified speech / non-speech by
   `vad="webrtc"` (Google's WebRTC VAD from the `webrtcvad-wheels` package, `aggressiveness`
   0-3) or `vad="energy"` (numpy fallback: frame RMS above `energy_threshold_db` dBFS, held
   for `hangover_ms` after it drops to bridge stop consonants; meant for close-talk channels
   with a quiet noise floor). A turn *starts* once `min_speech_ms` of consecutive speech
   frames are seen (its onset is *detected* then, at the end of those frames), and *ends*
   after `silence_ms` (700 ms) of non-speech following speech: the end of turn (EOT) is
   detected at the end of that silence.
2. **Typed messages** are turns from their arrival to arrival + read time
   (`tasks.common.typed_read_s`, the model's own reading budget); **background results**
   (scripted, as the model gets them) are zero-length turns at their arrival: a cascade's
   LLM continues when its tool call returns.
3. **The oracle responder.** For an EOT at time e it says the ground-truth model utterances
   (`episode.model_words`, grouped with the training data's 0.5 s gap rule) that are still
   unsaid and start before the next turn *onset* after e: "the model's part of the stretch of
   conversation up to the next user turn" (overdue ones included: a cascade cannot answer
   before the EOT). The reply starts at e + `response_latency_s` (0.5 s: LLM + TTS to first
   audio); words keep their timing *within* an utterance, consecutive utterances of one reply
   are `REPLY_PAUSE_S` apart. The oracle thus knows the content and order of the dialogue but
   never its timing: no utterance keeps its target start time, and nothing is said before an
   EOT (a cascade has no notion of time passing without input; it never speaks unprompted).
   Nor does it know the future: a target utterance that answers what the video shows (the
   visual tasks list `metadata["reply_available_at"]`: [utterance start, time first visible])
   is said only at an EOT at or after that time; the cascade looks at the frame when a turn ends.
   Target delegation requests are emitted the same way (DELEGATE at the reply start).
   With `filler="Okay."` a turn that has no target reply gets that word (a real cascade
   answers every turn its VAD passes; by default such turns get silence, a lower bound on
   false responses).
4. **Turn-taking rules.** A reply is not started while another turn is open (the user is
   still talking); a turn onset before a reply starts cancels it (its content stays unsaid and
   goes to the next EOT's reply). Barge-in: a VAD speech onset while the cascade speaks stops
   it `barge_in_ms` (200 ms) after the onset is detected: words starting later are dropped,
   the word in progress is cut. Typed messages and results never barge in.

Caveats (favourable to the baseline): its content is the target's, so content errors are not
modelled; the interruption task's target answer is already cut at the interruption, but the
cascade's copy starts at least `response_latency_s` later than the target, so its stop is
decided by barge-in; where the target places a timed utterance after a later user turn
(TimeSpeak with chatter), the oracle answers that turn and may land in the window by luck.

Output: `EpisodeRun(system="turn-based baseline")`. With `clock="text"` (default) words,
SPEECH_START/SPEECH_END and DELEGATE go through the same text-stream packing + unpacking as
`grading.ground_truth_run`, so the baseline is graded on the model's clock (slot times);
`clock="exact"` keeps the cascade's audio times (SPEECH_START/END at utterance edges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from interaction_jax.data.episode import BackgroundEvent, Episode, Word
from interaction_jax.eval.runner import EpisodeRun, utterances
from interaction_jax.streams.tokenizer import Control

SYSTEM = "turn-based baseline"
REPLY_PAUSE_S = 0.6  # between two utterances of one reply (> the 0.5 s utterance gap, so they stay apart)
VADS = ("webrtc", "energy")
WEBRTC_RATES = (8000, 16000, 32000, 48000)


@dataclasses.dataclass(frozen=True)
class CascadeOptions:
    """Knobs of the cascade (see the module docstring); `run_baseline(**options)` fills them."""

    vad: str = "webrtc"
    silence_ms: float = 700.0
    response_latency_s: float = 0.5
    barge_in_ms: float = 200.0
    frame_ms: int = 30
    min_speech_ms: float = 120.0
    aggressiveness: int = 2  # webrtc mode 0 (permissive) .. 3 (aggressive)
    energy_threshold_db: float = -40.0
    hangover_ms: float = 90.0
    clock: str = "text"  # "text" (graded like the model) | "exact" (audio times)
    filler: str | None = None

    def __post_init__(self):
        if self.vad not in VADS:
            raise ValueError(f"baseline: unknown vad {self.vad!r}; choose from {VADS}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"baseline: frame_ms must be 10, 20 or 30 (WebRTC frame sizes), got {self.frame_ms}")
        if self.clock not in ("text", "exact"):
            raise ValueError(f"baseline: clock must be 'text' or 'exact', got {self.clock!r}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"baseline: aggressiveness must be 0..3, got {self.aggressiveness}")
        for name in ("silence_ms", "response_latency_s", "barge_in_ms", "min_speech_ms", "hangover_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"baseline: {name} must be >= 0, got {getattr(self, name)}")


# ---- VAD ---------------------------------------------------------------------------------------
def webrtc_frames(audio: np.ndarray, sr: int, frame_ms: int = 30, aggressiveness: int = 2) -> np.ndarray:
    """[n_frames] bool: WebRTC VAD speech decision per `frame_ms` frame (a trailing partial frame is dropped)."""
    try:
        import webrtcvad
    except ImportError as e:
        raise ImportError("baseline: vad='webrtc' needs the webrtcvad-wheels package "
                          "(pip install webrtcvad-wheels), or pass vad='energy'") from e
    audio = np.asarray(audio, np.float32)
    if sr not in WEBRTC_RATES:
        from interaction_jax.features.audio import ensure_audio

        audio, sr = ensure_audio(audio, sr, 16000), 16000
    n = int(sr * frame_ms / 1000)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    vad = webrtcvad.Vad(int(aggressiveness))
    return np.array([vad.is_speech(pcm[i * n : (i + 1) * n].tobytes(), sr) for i in range(len(pcm) // n)], bool)


def energy_frames(audio: np.ndarray, sr: int, frame_ms: int = 30, threshold_db: float = -40.0,
                  hangover_ms: float = 90.0) -> np.ndarray:
    """[n_frames] bool: frame RMS above `threshold_db` dBFS, held `hangover_ms` after it drops (causal)."""
    audio = np.asarray(audio, np.float32)
    n = int(sr * frame_ms / 1000)
    k = len(audio) // n
    rms_db = 10.0 * np.log10(np.mean(audio[: k * n].reshape(k, n).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = rms_db > threshold_db
    hold = int(np.ceil(hangover_ms / frame_ms))
    out = loud.copy()
    last = -(10**9)
    for i, v in enumerate(loud):
        if v:
            last = i
        elif i - last <= hold:
            out[i] = True
    return out


def speech_frames(audio: np.ndarray, sr: int, opts: CascadeOptions) -> np.ndarray:
    """Per-frame speech decisions of the VAD named by `opts.vad`."""
    if opts.vad == "webrtc":
        return webrtc_frames(audio, sr, opts.frame_ms, opts.aggressiveness)
    return energy_frames(audio, sr, opts.frame_ms, opts.energy_threshold_db, opts.hangover_ms)


@dataclasses.dataclass(frozen=True)
class Turn:
    """A user turn as the cascade sees it: `onset` = when it learns the turn began, `end` = its EOT."""

    onset: float
    end: float | None  # None: still open when the episode ends
    source: str  # "voice" | "typed" | "result"
    speech_start: float | None = None  # voice: start of the first speech frame
    speech_end: float | None = None  # voice: end of the last speech frame


def vad_turns(frames: np.ndarray, frame_s: float, *, min_speech_s: float, silence_s: float) -> list[Turn]:
    """Voice turns from per-frame decisions: onset after `min_speech_s` of speech, EOT after `silence_s` without."""
    need_on = max(1, int(np.ceil(min_speech_s / frame_s - 1e-9)))
    need_off = max(1, int(np.ceil(silence_s / frame_s - 1e-9)))
    turns: list[Turn] = []
    run_start, run = 0, 0  # consecutive speech frames (before onset)
    in_turn, start, last_speech, quiet = False, 0, 0, 0
    for i, speech in enumerate(np.asarray(frames, bool).tolist()):
        if not in_turn:
            if speech:
                run_start = i if run == 0 else run_start
                run += 1
                if run >= need_on:
                    in_turn, start, last_speech, quiet = True, run_start, i, 0
                    onset = (i + 1) * frame_s
            else:
                run = 0
            continue
        if speech:
            last_speech, quiet = i, 0
            continue
        quiet += 1
        if quiet >= need_off:
            turns.append(Turn(onset, (i + 1) * frame_s, "voice", start * frame_s, (last_speech + 1) * frame_s))
            in_turn, run = False, 0
    if in_turn:
        turns.append(Turn(onset, None, "voice", start * frame_s, (last_speech + 1) * frame_s))
    return turns


def episode_turns(episode: Episode, opts: CascadeOptions) -> list[Turn]:
    """Every turn the cascade sees in an episode (voice, typed, background results), by onset."""
    from interaction_jax.data.tasks.common import typed_read_s

    frames = speech_frames(episode.user_audio, episode.sample_rate, opts)
    turns = vad_turns(frames, opts.frame_ms / 1000, min_speech_s=opts.min_speech_ms / 1000,
                      silence_s=opts.silence_ms / 1000)
    turns += [Turn(ev.time, ev.time + typed_read_s(ev.text), "typed") for ev in episode.user_text]
    turns += [Turn(ev.time, ev.time, "result") for ev in episode.background if ev.kind in ("result", "error")]
    return sorted(turns, key=lambda t: (t.onset, t.end if t.end is not None else np.inf))


# ---- the cascade ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Reply:
    start: float
    utterances: list[list[Word]]  # absolute times
    requests: list[tuple[float, str]]  # (time emitted, request text)
    content: list[int]  # indices of the target utterances it says (back to the queue if cancelled)
    request_ids: list[int]  # indices of the target requests it emits (likewise)

    @property
    def end(self) -> float:
        return max((u[-1].end for u in self.utterances if u), default=self.start)

    def cut(self, at: float) -> None:
        """Stops at `at`: words starting later are dropped, the word in progress ends there."""
        self.utterances = [[Word(w.text, w.start, min(w.end, at)) for w in u if w.start < at] for u in self.utterances]
        self.utterances = [u for u in self.utterances if u]


def _compose(start: float, parts: Sequence[list[Word]]) -> list[list[Word]]:
    """Utterances laid out from `start`: timing kept inside each, REPLY_PAUSE_S between them."""
    out, t = [], start
    for words in parts:
        t0 = words[0].start
        out.append([Word(w.text, t + (w.start - t0), t + (w.end - t0)) for w in words])
        t = out[-1][-1].end + REPLY_PAUSE_S
    return out


def _available_at(episode: Episode, targets: Sequence[list[Word]]) -> list[float]:
    """Per target utterance, when what it answers is first visible to the cascade (-inf: any EOT)."""
    pairs = episode.metadata.get("reply_available_at") or []
    out = []
    for ws in targets:
        times = [t for s, t in pairs if ws[0].start - 1e-6 <= s <= ws[-1].end + 1e-6]
        out.append(max(times) if times else -np.inf)
    return out


def cascade(episode: Episode, opts: CascadeOptions, turns: Sequence[Turn] | None = None) -> list[_Reply]:
    """Simulates the cascade on one episode; returns the replies it said (after cancellations and cuts)."""
    turns = list(turns) if turns is not None else episode_turns(episode, opts)
    targets = [ws for _, _, ws in utterances(episode.model_words)]
    seen = _available_at(episode, targets)
    requests = sorted((ev.time, ev.text) for ev in episode.background if ev.kind == "request")
    unsaid = list(range(len(targets)))
    unsent = list(range(len(requests)))
    lat, barge = opts.response_latency_s, opts.barge_in_ms / 1000
    # Events in time order: onsets (cancel / barge in) and ends (reply); at a tie the onset comes first
    # (a zero-length result turn opens, then ends; an onset at another turn's EOT keeps that EOT silent).
    events = sorted([(t.onset, 0, i) for i, t in enumerate(turns)] +
                    [(t.end, 1, i) for i, t in enumerate(turns) if t.end is not None])
    said: list[_Reply] = []
    for time, is_end, i in events:
        turn = turns[i]
        live = [r for r in said if r.end > time or r.start > time]
        if not is_end:
            for r in live:
                if r.start >= time:  # not started yet: cancelled, its content goes back to the queue
                    said.remove(r)
                    unsaid = sorted(unsaid + r.content)
                    unsent = sorted(unsent + r.request_ids)
                elif turn.source == "voice":  # barge-in
                    r.cut(time + barge)
            continue
        if any(j != i and o.onset <= time and (o.end is None or o.end > time) for j, o in enumerate(turns)):
            continue  # another turn is still open: the EOT of that turn will answer
        boundary = min((o.onset for o in turns if o.onset > time), default=np.inf)
        content = [k for k in unsaid if targets[k][0].start < boundary and seen[k] <= time]
        reqs = [k for k in unsent if requests[k][0] < boundary]
        parts = [targets[k] for k in content]
        if not parts and opts.filler and turn.source != "result":
            parts = [[Word(opts.filler, 0.0, 0.4)]]
        if not parts and not reqs:
            continue
        start = time + lat
        if live:
            start = max(start, max(r.end for r in live) + REPLY_PAUSE_S)
        reply = _Reply(start, _compose(start, parts), [(start, requests[k][1]) for k in reqs], content, reqs)
        unsaid = [k for k in unsaid if k not in content]
        unsent = [k for k in unsent if k not in reqs]
        said.append(reply)
    return said


def _exact_run(episode: Episode, replies: Sequence[_Reply]) -> EpisodeRun:
    words, events, delegations = [], [], []
    for r in replies:
        for u in r.utterances:
            words += u
            events += [(u[0].start, Control.SPEECH_START.name), (u[-1].end, Control.SPEECH_END.name)]
        for t, text in r.requests:
            events += [(t, Control.DELEGATE.name), (t, Control.DELEGATE_END.name)]
            delegations.append((t, text))
    words = [w for w in sorted(words, key=lambda w: w.start) if w.start < episode.duration]
    return EpisodeRun(episode.episode_id, episode.task, episode.duration, words, events=sorted(events),
                      delegations=sorted(delegations), system=SYSTEM)


def _text_run(episode: Episode, replies: Sequence[_Reply]) -> EpisodeRun:
    """The replies through the model's text-stream packing + unpacking (as `grading.ground_truth_run`)."""
    from interaction_jax.config_lib import base_config
    from interaction_jax.streams import pack, text_streams
    from interaction_jax.streams.layout import StreamLayout
    from interaction_jax.streams.tokenizer import make_tokenizer

    config = base_config()
    layout, tokenizer = StreamLayout.from_config(config), make_tokenizer(config.text)
    words = [w for r in replies for u in r.utterances for w in u]
    reqs = [BackgroundEvent("request", t, text) for r in replies for t, text in r.requests]
    said = dataclasses.replace(episode, model_words=sorted(words, key=lambda w: w.start), background=reqs)
    n = layout.num_turns(episode.duration)
    text, _ = text_streams.fill_slots(text_streams.model_text_tokens(said, layout, tokenizer), n,
                                      layout.model_text_slots)
    tr = pack.unpack(layout, tokenizer, np.arange(n), text)
    return EpisodeRun(episode.episode_id, episode.task, episode.duration,
                      [w for w in tr.words if w.start < episode.duration], events=list(tr.events),
                      delegations=pack.delegation_requests(tr, tokenizer), system=SYSTEM)


def run_episode(episode: Episode, opts: CascadeOptions | None = None) -> EpisodeRun:
    """The cascade's run of one episode."""
    opts = opts or CascadeOptions()
    replies = cascade(episode, opts)
    return _text_run(episode, replies) if opts.clock == "text" else _exact_run(episode, replies)


def run_baseline(episodes: Sequence[Episode], **options) -> list[EpisodeRun]:
    """The turn-based cascade on each episode (options: the fields of `CascadeOptions`), in order."""
    known = {f.name for f in dataclasses.fields(CascadeOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"baseline: unknown options {unknown}; known: {sorted(known)}")
    opts = CascadeOptions(**options)
    return [run_episode(ep, opts) for ep in episodes]


__all__ = ["SYSTEM", "CascadeOptions", "Turn", "cascade", "energy_frames", "episode_turns", "run_baseline",
           "run_episode", "vad_turns", "webrtc_frames"]
