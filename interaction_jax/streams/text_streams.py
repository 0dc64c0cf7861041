"""Text streams on the micro-turn grid: which token goes into which slot of which micro-turn.

Every text stream (user typed text, background results, model text) is a time-ordered list of
tokens, each with the micro-turn in which it becomes available. `fill_slots` places them into
the fixed slots of each micro-turn in order; tokens that do not fit carry over to the next
micro-turn (never dropped inside the window, never reordered, never placed early). A token may
also name the first slot of its micro-turn it may take (`TimedToken.slot`; the user's words with
`model.user_speech_timing = "at_end"`). Unused slots hold `Control.NOTHING`: silence is data.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from interaction_jax.data.episode import Episode
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.streams.tokenizer import Control

# Gap (seconds) between two model words that starts a new utterance (SPEECH_END / SPEECH_START).
UTTERANCE_GAP_S = 0.5
# When a user word's transcript may start (`model.user_speech_timing`, see `user_speech_tokens`).
USER_SPEECH_TIMINGS = ("next_turn", "at_end")


@dataclasses.dataclass(frozen=True)
class TimedToken:
    """A token that becomes available in micro-turn `turn`.

    Tokens are ordered by (turn, time, seq): `time` is the time of the event the token belongs
    to (all tokens of one event share it) and `seq` keeps an event's tokens together and in order.
    `slot`: the first slot of micro-turn `turn` the token may take (any slot of a later one).
    """

    turn: int
    time: float
    token: int
    seq: int = 0
    slot: int = 0


def _event_tokens(turn: int, time: float, ids: list[int], seq0: int, slot: int = 0) -> list[TimedToken]:
    return [TimedToken(turn, time, int(i), seq0 + j, slot) for j, i in enumerate(ids)]


def fill_slots(tokens: list[TimedToken], num_turns: int, slots: int) -> tuple[np.ndarray, int]:
    """Places tokens into `[num_turns, slots]` (NOTHING-filled), carrying overflow forward.

    Returns the slot array and the number of tokens that did not fit before `num_turns`.
    """
    out = np.full((num_turns, max(slots, 0)), int(Control.NOTHING), np.int32)
    if slots <= 0:
        return out, len(tokens)
    ordered = sorted(tokens, key=lambda x: (x.turn, x.time, x.seq))
    i = 0
    for t in range(num_turns):
        for k in range(slots):
            if i < len(ordered) and (ordered[i].turn < t or (ordered[i].turn == t and ordered[i].slot <= k)):
                out[t, k] = ordered[i].token
                i += 1
    return out, len(ordered) - i


def _words_to_utterances(words) -> list[list]:
    utterances: list[list] = []
    for w in sorted(words, key=lambda w: w.start):
        if utterances and w.start - utterances[-1][-1].end <= UTTERANCE_GAP_S:
            utterances[-1].append(w)
        else:
            utterances.append([w])
    return utterances


def user_text_tokens(episode: Episode, layout: StreamLayout, tokenizer) -> list[TimedToken]:
    """Typed user messages: the message's tokens then TEXT_END, available at arrival."""
    out: list[TimedToken] = []
    for ev in sorted(episode.user_text, key=lambda e: e.time):
        ids = tokenizer.encode(ev.text) + [int(Control.TEXT_END)]
        out += _event_tokens(layout.input_turn(ev.time), ev.time, ids, len(out))
    return out


def background_tokens(episode: Episode, layout: StreamLayout, tokenizer) -> list[TimedToken]:
    """Background results/errors: BG_START|BG_ERROR, text, BG_END, available on arrival."""
    out: list[TimedToken] = []
    for ev in sorted(episode.background, key=lambda e: e.time):
        if ev.kind == "request":
            continue
        if ev.kind not in ("result", "error"):
            raise ValueError(f"episode {episode.episode_id}: unknown background event kind {ev.kind!r}")
        head = Control.BG_START if ev.kind == "result" else Control.BG_ERROR
        ids = [int(head)] + tokenizer.encode(ev.text) + [int(Control.BG_END)]
        out += _event_tokens(layout.input_turn(ev.time), ev.time, ids, len(out))
    return out


def heard_slot(end_s: float, layout: StreamLayout, frame_delay: int) -> tuple[int, int]:
    """(micro-turn, USER_AUDIO slot) of the first position whose input holds the last frame of a
    sound ending at `end_s`: the last frame centred before `end_s` (frame k is centred at k*H),
    in the row the causal shift of `frame_delay` frames puts it (`pack.causal_frame_delay`:
    micro-turn t holds frames [N*t - d, N*t + N - d), slot j the j-th F of them)."""
    last = max(0, math.ceil(end_s * 1000.0 / layout.frame_ms - 1e-9) - 1)
    turn, within = divmod(last + int(frame_delay), layout.frames_per_turn)
    return turn, within // layout.frames_per_audio_position


def user_speech_tokens(
    episode: Episode, layout: StreamLayout, tokenizer, timing: str = "next_turn", frame_delay: int | None = None
) -> list[TimedToken]:
    """What the user said, as text: each spoken word's tokens, available once it has been heard.

    The target of the auxiliary transcription loss (`model.user_speech_loss_weight`): at the
    USER_AUDIO positions the model writes what it has just heard, so the audio embedding has
    to carry word identity, not only timing (an inner transcript, as open duplex models keep).
    `timing` (`model.user_speech_timing`): "next_turn", from the micro-turn after the one in which
    the word ends; "at_end", from the first position whose input holds the word's last frame
    (`heard_slot`; needs the features' `frame_delay`), so the transcript, and the feed of it one
    micro-turn later, come a micro-turn earlier.
    """
    if timing not in USER_SPEECH_TIMINGS:
        raise ValueError(f"user_speech_timing={timing!r}: expected one of {list(USER_SPEECH_TIMINGS)}")
    if timing == "at_end" and frame_delay is None:
        raise ValueError("user_speech_timing='at_end' needs frame_delay (pack.causal_frame_delay of the features)")
    out: list[TimedToken] = []
    for w in sorted(episode.user_words, key=lambda w: w.end):
        ids = tokenizer.encode(w.text + " ")
        if timing == "at_end":
            turn, slot = heard_slot(w.end, layout, frame_delay)
            out += _event_tokens(turn, w.end, ids, len(out), slot)
        else:
            out += _event_tokens(layout.input_turn(w.end) + 1, w.end, ids, len(out))
    return out


def model_text_tokens(episode: Episode, layout: StreamLayout, tokenizer) -> list[TimedToken]:
    """What the model should write: utterances framed by SPEECH_START/END, and delegations.

    A word starting at time s is produced by micro-turn `layout.output_turn(s)` (the output
    block that plays during [s - s mod T, ...)). SPEECH_END is produced with the turn that
    covers the utterance's end. A delegation request at time s is DELEGATE, request text,
    DELEGATE_END, produced by `output_turn(s)`; it is written before any words that start at
    the same moment (a filler said while the job is handed off follows the whole request, so the
    request is one unbroken copy of what was asked rather than split by the filler's first word).
    """
    out: list[TimedToken] = []
    for ev in sorted(episode.background, key=lambda e: e.time):
        if ev.kind != "request":
            continue
        ids = [int(Control.DELEGATE)] + tokenizer.encode(ev.text) + [int(Control.DELEGATE_END)]
        out += _event_tokens(layout.output_turn(ev.time), ev.time, ids, len(out))
    for utt in _words_to_utterances(episode.model_words):
        first, last = utt[0], utt[-1]
        out += _event_tokens(layout.output_turn(first.start), first.start, [int(Control.SPEECH_START)], len(out))
        for w in utt:
            out += _event_tokens(layout.output_turn(w.start), w.start, tokenizer.encode(w.text + " "), len(out))
        out += _event_tokens(layout.output_turn(last.end), last.end, [int(Control.SPEECH_END)], len(out))
    return out
