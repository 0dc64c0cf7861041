"""Sessions and the scheduler: live 200 ms chunks -> one batched engine tick for all sessions.

    engine = StreamEngine(config, model)
    sched = Scheduler(engine)
    s = sched.open_session(seed=1)            # takes a free slot, or raises NoCapacityError
    s.push(Chunk(audio=pcm, sample_rate=48000, text="hi"))
    outs = sched.tick()                       # one micro-turn for every session with a pending chunk
    s.transcript().words; s.waveform(); s.close()

A chunk carries one micro-turn of user input: audio (any rate; resampled), optional typed text,
an optional video frame, and background-model events (`background.protocol.DelegationEvent`).
Each session turns its chunk into its row of the engine inputs with the *same* layout code as
training: `StreamingFeatures` gives pack's dMel codes, typed text becomes `text + TEXT_END`
tokens and background events go through `background.slots.BackgroundQueue`, both slot-filled
with carry-over exactly like `text_streams.fill_slots`; every position comes from
`StreamLayout.block_slice`. With `layout.video_every = k > 1` a session shows video only in its
micro-turns 0, k, 2k, ... (counted from its own start): the last frame pushed in the k chunks up
to and including that one, as the packer shows it (`pack.sparse_frame`); the engine drops the VIDEO
positions of the other micro-turns. A session without a pending chunk sits the tick out (its slot is
idle and untouched); sessions join and leave between ticks without affecting the others,
because slots never share state and RNG keys are per session (tested bitwise).

Delegation (`Scheduler(engine, hub=DelegationHub(...))`, see `background/session.py`). Each tick
starts with `hub.pump()` (non-blocking in live mode), and a session's background slots come
from `hub.take` — events a client puts in `Chunk.background` are pushed into the same hub queue,
so they share one ordered stream. After the engine step each session scans its new model-text
tokens (`DelegationScanner`: a request may span micro-turns, DELEGATE text... DELEGATE_END) and
submits every completed request with the conversation so far: the user's words
(`Chunk.transcript`, e.g. from an ASR or, in evaluation, the episode's ground truth), the user's
typed text, the model's own words and text, earlier delegations and session metadata. Times
are on the session clock (micro-turn t's input covers [t T, (t+1) T); its model text slot i is
stamped output_window(t).start + i T / slots, as `pack.unpack` does). `session.delegation_log()`
keeps request time, text, job id, result arrival time, result and status (for evaluators).

Teacher forcing (`Chunk.force`, tests and oracle evaluation): one packed micro-turn of an
episode (`pack.pack_turn(grid, t)`, which is `pack_window(grid, t, 1)` for a uniform layout)
whose *output* block (model text and model audio) the engine is fed instead of its own samples;
the input block still comes from the chunk and the hub. The session then treats the forced
model text as what the model said (it is what its context holds).
`Chunk.force_audio_only` forces only the model-audio positions: the model hears the episode's
own speech as its voice while its text is sampled (a diagnostic for the audio feedback loop).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from interaction_jax.background.protocol import Delegation
from interaction_jax.background.session import DelegationHub
from interaction_jax.background.slots import BackgroundQueue
from interaction_jax.data.episode import TextEvent, Word
from interaction_jax.features.mel import mel_to_audio
from interaction_jax.features.video import frame_to_patches, with_delta
from interaction_jax.inference.cache import SessionLimitError
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.features import StreamingFeatures
from interaction_jax.streams import pack
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.tokenizer import NUM_CONTROL, Control, make_tokenizer


class NoCapacityError(RuntimeError):
    """Every engine slot holds an open session."""


class SessionClosedError(RuntimeError):
    """push() on a closed session."""


class ChunkError(ValueError):
    """A chunk that is not one micro-turn of valid input; raised by `Session.push`, only for that session."""


MAX_SAMPLE_RATE = 384_000


def check_chunk(chunk: Chunk, layout: StreamLayout, session_id: str = "session", *, partial_seen: bool = False) -> bool:
    """Validates one chunk before it is queued; returns True when its audio is a partial (short, last) chunk.

    Audio: None (silence) or a 1-D real array of finite samples at an integer `sample_rate` in
    [1, 384000], exactly one micro-turn long (round(micro_turn_s * sample_rate) samples) or shorter
    as the session's last audio chunk. Text: a string or a sequence of strings. Video: [H, W, 3]
    uint8. Every problem raises `ChunkError` naming the session and what was expected.
    """
    def bad(msg: str) -> ChunkError:
        return ChunkError(f"{session_id}: {msg}")

    sr = chunk.sample_rate
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or not 1 <= int(sr) <= MAX_SAMPLE_RATE:
        raise bad(f"sample_rate={sr!r}: expected an integer number of samples per second in [1, {MAX_SAMPLE_RATE}]")
    partial = False
    if chunk.audio is not None:
        a = np.asarray(chunk.audio)
        if a.ndim == 2 and 1 in a.shape:
            a = a.reshape(-1)
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise bad(f"audio must be a 1-D array of mono samples (float or int PCM), got shape {a.shape} {a.dtype}")
        expected = int(round(layout.micro_turn_s * int(sr)))
        if a.size > expected:
            raise bad(f"audio chunk holds {a.size} samples at {int(sr)} Hz; expected one micro-turn: {expected} "
                      f"samples ({layout.micro_turn_ms:g} ms)")
        if partial_seen:
            raise bad("audio after a partial (short) chunk: only the session's last audio chunk may be shorter "
                      f"than {expected} samples")
        partial = a.size < expected
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise bad("audio chunk contains NaN or infinite samples")
    texts = [chunk.text] if isinstance(chunk.text, str) or chunk.text is None else chunk.text
    if not isinstance(texts, (list, tuple)) or not all(t is None or isinstance(t, str) for t in texts):
        raise bad(f"text must be a string or a list of strings, got {chunk.text!r:.60}")
    if chunk.video is not None:
        v = np.asarray(chunk.video)
        if v.ndim != 3 or v.shape[2] != 3 or v.dtype != np.uint8:
            raise bad(f"video frame must be [H, W, 3] uint8, got {v.shape} {v.dtype}")
    if chunk.force is not None:
        missing = {"token_ids", "dmel", "text_targets"} - set(chunk.force)
        if missing:
            raise bad(f"Chunk.force must be pack_turn(grid, t); missing {sorted(missing)}")
    return partial


@dataclasses.dataclass
class Chunk:
    """One micro-turn of user input (see the module docstring)."""

    audio: np.ndarray | None = None  # mono PCM, one micro-turn long; None = silence
    sample_rate: int = 16000
    text: str | Sequence[str] | None = None  # typed messages arriving in this micro-turn
    video: np.ndarray | None = None  # an RGB frame [H, W, 3] uint8 (the last one of the micro-turn)
    background: Sequence = ()  # DelegationEvents polled during this micro-turn (with a hub: into its queue)
    transcript: Sequence[Word] = ()  # user words heard so far in this chunk, session times (ASR / ground truth)
    force: Mapping[str, np.ndarray] | None = None  # teacher forcing: pack.pack_turn(grid, t) (module docstring)
    force_audio_only: bool = False  # with `force`: force only the model-audio inputs, sample the text

    @property
    def text_forced(self) -> bool:
        """The model text of this micro-turn is the forced one, not sampled."""
        return self.force is not None and not self.force_audio_only


@dataclasses.dataclass
class TurnOutput:
    """What a session's micro-turn produced; it plays during the next micro-turn."""

    turn: int
    text_tokens: np.ndarray  # [model_text_slots] int32
    mel: np.ndarray  # [audio_positions, F, M] log-mel
    latency_s: float  # wall time of the engine tick that produced it
    forced: bool = False  # text_tokens are the teacher-forced text (Chunk.force), not samples
    heard_tokens: np.ndarray | None = None  # [audio_positions] the text head at the user's audio (engine.py)


class DelegationScanner:
    """Finds DELEGATE request DELEGATE_END spans in model text fed one micro-turn at a time.

    Same reading as `pack.delegation_requests` on the whole stream (a new DELEGATE restarts the
    request; control tokens inside it are skipped), but incremental, so a request spanning
    micro-turns is submitted in the micro-turn that ends it.
    """

    def __init__(self, layout: StreamLayout, tokenizer):
        self.layout, self.tokenizer = layout, tokenizer
        self._cur: list[int] | None = None
        self._time = 0.0

    def feed(self, turn: int, text_tokens: Sequence[int]) -> list[tuple[float, str]]:
        """(time of DELEGATE, request text) for every request completed in this micro-turn's tokens."""
        row = np.asarray(text_tokens).reshape(-1).tolist()
        slot_s = self.layout.micro_turn_s / max(len(row), 1)
        t0 = self.layout.output_window(int(turn))[0]
        done: list[tuple[float, str]] = []
        for i, tok in enumerate(row):
            if tok == Control.DELEGATE:
                self._cur, self._time = [], t0 + i * slot_s
            elif tok == Control.DELEGATE_END and self._cur is not None:
                done.append((self._time, self.tokenizer.decode(self._cur)))
                self._cur = None
            elif self._cur is not None and tok >= NUM_CONTROL:
                self._cur.append(tok)
        return done


def model_text_pieces(streams: pack.TimedStreams, tokenizer) -> list[TextEvent]:
    """The model's text stream as timed pieces between control tokens (requests left out: they are delegations)."""
    pieces: list[TextEvent] = []
    buf: list[int] = []
    start, in_request = 0.0, False

    def flush():
        text = tokenizer.decode(buf).strip() if buf else ""
        if text:
            pieces.append(TextEvent(text, start))
        buf.clear()

    for time_s, tok in streams.tokens:
        if tok < NUM_CONTROL:
            flush()
            in_request = tok == Control.DELEGATE or (in_request and tok != Control.DELEGATE_END)
        elif not in_request:
            if not buf:
                start = time_s
            buf.append(tok)
    flush()
    return pieces


class Session:
    """A conversation bound to one engine slot; created by `Scheduler.open_session`."""

    def __init__(self, scheduler: Scheduler, session_id: str, slot: int, seed: int):
        engine = scheduler.engine
        self.scheduler, self.id, self.slot, self.seed = scheduler, session_id, slot, seed
        self.layout = engine.layout
        self.features = StreamingFeatures(engine.layout, engine.feature_params)
        self.tokenizer = scheduler.tokenizer
        self.hub: DelegationHub | None = scheduler.hub
        self.background = BackgroundQueue(scheduler.tokenizer)  # used without a hub
        self._user_text: collections.deque[int] = collections.deque()
        self.pending: collections.deque[Chunk] = collections.deque()
        self.outputs: list[TurnOutput] = []
        self.turns_fed = 0
        self.closed = False
        self.user_words: list[Word] = []  # from Chunk.transcript
        self.user_typed: list[TextEvent] = []  # typed messages, stamped at their micro-turn's start
        self._scanner = DelegationScanner(self.layout, self.tokenizer)
        self._final_log: list[Delegation] | None = None  # delegation log frozen at close
        self._partial_seen = False  # a short (last) audio chunk was pushed
        self.error: BaseException | None = None  # why the scheduler closed this session, if it did
        # model.user_speech_feedback: what the model heard last micro-turn is fed at its user-audio slots
        self._feedback = bool(engine.config.model.get("user_speech_feedback", False))
        self._heard_feed = np.full(self.layout.audio_positions, int(Control.NOTHING), np.int32)
        self._frame: np.ndarray | None = None  # video_every > 1: the last frame since the last video micro-turn
        self._shown: np.ndarray | None = None  # layout.video_delta: RGB patches the last video micro-turn showed

    # ---- client side ------------------------------------------------------------------------
    def push(self, chunk: Chunk) -> None:
        """Queues one micro-turn of input; it is processed by the next tick that reaches it.

        The chunk is validated here (`check_chunk`), so a bad chunk raises `ChunkError` for this
        session only and never reaches a shared tick.
        """
        if self.closed:
            raise SessionClosedError(f"{self.id}: push() after close()"
                                     + (f" (closed by the scheduler: {self.error})" if self.error else ""))
        self.scheduler.engine.policy.check_turn(self.turns_fed + len(self.pending), self.id)
        if check_chunk(chunk, self.layout, self.id, partial_seen=self._partial_seen):
            self._partial_seen = True
        self.pending.append(chunk)

    def close(self) -> None:
        self.scheduler.close(self)

    def input_window(self) -> tuple[float, float]:
        """Session-time window [start, end) of the micro-turn whose input is filled next (the hub's clock)."""
        T = self.layout.micro_turn_s
        return self.turns_fed * T, (self.turns_fed + 1) * T

    # ---- scheduler side ---------------------------------------------------------------------
    def fill_inputs(self, inputs: dict[str, np.ndarray], chunk: Chunk) -> None:
        """Writes this session's row (slot) of the engine inputs for its next micro-turn."""
        lay, row = self.layout, self.slot
        now = self.input_window()[0]
        texts = [chunk.text] if isinstance(chunk.text, str) else list(chunk.text or [])
        for text in texts:
            self._user_text.extend(self.tokenizer.encode(text) + [int(Control.TEXT_END)])
            self.user_typed.append(TextEvent(text, now))
        self.user_words.extend(chunk.transcript)
        tok = inputs["token_ids"][row]
        tok[:] = int(Control.PAD)
        n = lay.user_text_slots
        ut = [self._user_text.popleft() for _ in range(min(n, len(self._user_text)))]
        tok[lay.block_slice(Kind.USER_TEXT)] = ut + [int(Control.NOTHING)] * (n - len(ut))
        if self.hub is not None:
            if chunk.background:
                self.hub.push(self.id, chunk.background)
            tok[lay.block_slice(Kind.BACKGROUND)] = self.hub.take(self.id, lay.background_slots)
        else:
            if chunk.background:
                self.background.push(list(chunk.background))
            tok[lay.block_slice(Kind.BACKGROUND)] = self.background.take(lay.background_slots)
        if self._feedback:  # its own transcript of the previous micro-turn (interaction_model.user_speech_feedback)
            tok[lay.block_slice(Kind.USER_AUDIO)] = self._heard_feed
        inputs["dmel"][row] = 0
        inputs["dmel"][row][lay.block_slice(Kind.USER_AUDIO)] = self.features.push(chunk.audio, chunk.sample_rate)
        inputs["patches"][row] = 0
        inputs["video_present"][row] = False
        frame = chunk.video
        if not lay.uniform:  # video only every k-th micro-turn: the last frame of its k micro-turns
            self._frame, frame = self._frame if frame is None else frame, None
            if lay.has_video(self.turns_fed):
                frame, self._frame = self._frame, None
        video_turn = lay.video_patches and (lay.uniform or lay.has_video(self.turns_fed))
        if video_turn and frame is not None:
            patches = frame_to_patches(frame, lay.video_frame_size, lay.patch_size)
            # the change since the last video micro-turn's frame (streams/pack.py `shown_frame`, the same rule)
            inputs["patches"][row, 0] = with_delta(patches, self._shown) if lay.video_delta else patches
            inputs["video_present"][row, 0] = True
            self._shown = patches
        elif video_turn:
            self._shown = None
        inputs["active"][row] = True
        text_forced = chunk.text_forced
        inputs["forced"][row] = text_forced
        if "forced_audio" in inputs:
            inputs["forced_audio"][row] = chunk.force is not None
        if chunk.force is not None:
            for kind in (Kind.MODEL_TEXT, Kind.MODEL_AUDIO) if text_forced else (Kind.MODEL_AUDIO,):
                sl = lay.block_slice(kind)
                tok[sl] = np.asarray(chunk.force["token_ids"])[sl]
                inputs["dmel"][row][sl] = np.asarray(chunk.force["dmel"])[sl]
        self.turns_fed += 1

    def record_output(self, out: TurnOutput) -> None:
        """Appends a micro-turn's output and submits the delegation requests it completes."""
        self.outputs.append(out)
        if self._feedback and out.heard_tokens is not None:
            self._heard_feed = np.asarray(out.heard_tokens, np.int32).reshape(-1)
        if self.hub is None:
            return
        for t_req, request in self._scanner.feed(out.turn, out.text_tokens):
            self._delegate(t_req, request)

    def _delegate(self, t_req: float, request: str) -> int:
        """Sends one request with the conversation so far (the package keeps what was known at t_req)."""
        tr = self.transcript()
        return self.hub.delegate(
            self.id,
            request,
            t_req,
            user_words=self.user_words,
            model_words=tr.words,
            user_text=self.user_typed,
            model_text=model_text_pieces(tr, self.tokenizer),
        )

    # ---- results ----------------------------------------------------------------------------
    def transcript(self) -> pack.TimedStreams:
        """Model words / control events / mel so far, on the session clock (pack.unpack)."""
        turns = np.array([o.turn for o in self.outputs], np.int64)
        empty = np.zeros((0, self.layout.model_text_slots), np.int32)  # before the first output: no words, no error
        text = np.stack([o.text_tokens for o in self.outputs]) if self.outputs else empty
        mel = np.stack([o.mel for o in self.outputs]) if self.outputs else None
        return pack.unpack(self.layout, self.tokenizer, turns, text, mel)

    def heard_words(self) -> list[TextEvent]:
        """What the model heard the user say: its own transcript of the user's speech, word by word.

        Meaningful for a model trained with the user-speech target (`model.user_speech_loss_weight`
        > 0), which writes each word's text at its USER_AUDIO positions once it has heard the word
        (`model.user_speech_timing`: the micro-turn after the one the word ends in, or from the
        position holding its last frame); a word is complete at the space that ends it. Each word is
        stamped with the start of the micro-turn that wrote its last token.
        """
        words: list[TextEvent] = []
        buf: list[int] = []
        T = self.layout.micro_turn_s
        for o in self.outputs:
            if o.heard_tokens is None:
                continue
            buf += [int(t) for t in np.asarray(o.heard_tokens).reshape(-1) if int(t) >= NUM_CONTROL]
            text = self.tokenizer.decode(buf)
            if " " not in text:
                continue
            *done, rest = text.split(" ")
            words += [TextEvent(w, o.turn * T) for w in done if w]
            buf = self.tokenizer.encode(rest) if rest else []
        return words

    def delegations(self) -> list[tuple[float, str]]:
        """(time, request text) of every DELEGATE ... DELEGATE_END the model emitted."""
        return pack.delegation_requests(self.transcript(), self.tokenizer)

    def delegation_log(self) -> list[Delegation]:
        """Every delegation submitted to the hub: job id, request, time (of DELEGATE), status, result, result_time.

        Times are session seconds; `result_time` is when the result (or error) reached this
        session's background slots. After close(), jobs that never delivered are "cancelled".
        """
        if self._final_log is not None:
            return list(self._final_log)
        return list(self.hub.delegations(self.id)) if self.hub is not None else []

    def waveform(self, n_iter: int | None = None) -> np.ndarray:
        """The model's speech so far (Griffin-Lim of its mel frames), starting at transcript().mel_start."""
        eng = self.scheduler.engine
        mel = self.transcript().mel
        iters = int(n_iter if n_iter is not None else eng.config.inference.griffin_lim_iters)
        return mel_to_audio(mel, eng.feature_params, n_iter=iters, length=len(mel) * eng.feature_params.hop_length)


class Scheduler:
    """Maps sessions to engine slots and batches their chunks into one engine tick."""

    def __init__(self, engine: StreamEngine, tokenizer=None, *, hub: DelegationHub | None = None):
        """`hub` wires the background model in (module docstring); None = background only from chunks."""
        self.engine = engine
        self.tokenizer = tokenizer or make_tokenizer(engine.config.text)
        hub_vocab = getattr(hub.tokenizer, "vocab_size", None) if hub is not None else None
        if hub is not None and hub_vocab != getattr(self.tokenizer, "vocab_size", None):
            raise ValueError(
                f"Scheduler: the hub's tokenizer (vocab {hub_vocab}) differs from the model's "
                f"(vocab {getattr(self.tokenizer, 'vocab_size', None)}); build the hub with the same tokenizer"
            )
        self.hub = hub
        self.sessions: dict[str, Session] = {}
        self._free = list(range(engine.slots))
        self._ids = itertools.count()
        self.latencies: list[float] = []
        self.failures: dict[str, BaseException] = {}  # session id -> the error that closed it inside a tick

    def open_session(self, *, seed: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, session_id: str | None = None,
                     metadata: Mapping[str, Any] | None = None) -> Session:
        """Takes a free slot; with a hub also opens the hub session (`metadata` goes into every package)."""
        if not self._free:
            raise NoCapacityError(
                f"no capacity: all {self.engine.slots} slots hold open sessions "
                f"({sorted(self.sessions)}); close one or raise inference.slots"
            )
        sid = session_id or f"session-{next(self._ids)}"
        if sid in self.sessions:
            raise ValueError(f"session id {sid!r} is already open")
        slot = self._free[0]
        seed = int(self.engine.config.inference.seed) + slot if seed is None else int(seed)
        session = Session(self, sid, slot, seed)
        if self.hub is not None:
            inf = self.engine.config.inference
            meta = {
                "session_id": sid,
                "seed": seed,
                "slot": slot,
                "temperature": float(inf.temperature if temperature is None else temperature),
                "top_p": float(inf.top_p if top_p is None else top_p),
                "micro_turn_s": float(self.engine.layout.micro_turn_s),
                "opened_unix": time.time(),
                **dict(metadata or {}),
            }
            self.hub.open(sid, meta, clock=session.input_window)  # raises before the slot is taken
        self._free.remove(slot)
        self.engine.reset(slot, seed, temperature, top_p)
        self.sessions[sid] = session
        return session

    def close(self, session: Session) -> None:
        """Frees the slot (pending chunks are dropped; outputs stay readable on the session).

        With a hub, the session's unfinished jobs are cancelled; its delegation log stays readable.
        """
        if session.closed:
            return
        session.closed = True
        session.pending.clear()
        if self.hub is not None:
            log = self.hub.delegations(session.id)
            cancelled = set(self.hub.close(session.id))
            session._final_log = [
                dataclasses.replace(d, status="cancelled") if d.job_id in cancelled else d for d in log
            ]
        del self.sessions[session.id]
        self._free.append(session.slot)
        self._free.sort()

    def tick(self) -> dict[str, TurnOutput]:
        """One micro-turn for every session with a pending chunk; {session id: its output}."""
        if self.hub is not None:
            self.hub.pump()  # route background results first (never blocks in live mode)
        ready = [s for s in self.sessions.values() if s.pending]
        if not ready:
            return {}
        inputs = self.engine.empty_inputs()
        idle = self.engine.empty_inputs()
        chunks = [s.pending.popleft() for s in ready]
        kept = []
        for s, chunk in zip(ready, chunks, strict=True):
            try:
                s.fill_inputs(inputs, chunk)
            except Exception as e:  # noqa: BLE001 - one session's failure closes that session only
                for key, value in inputs.items():
                    value[s.slot] = idle[key][s.slot]
                s.error = e
                self.failures[s.id] = e
                self.close(s)
                continue
            kept.append((s, chunk))
        if not kept:
            return {}
        ready, chunks = [s for s, _ in kept], [c for _, c in kept]
        t0 = time.perf_counter()
        out = self.engine.step(inputs)
        dt = time.perf_counter() - t0
        self.latencies.append(dt)
        result = {}
        text_sl = self.engine.layout.block_slice(Kind.MODEL_TEXT)
        for s, chunk in zip(ready, chunks, strict=True):
            text = out["text_tokens"][s.slot]
            if chunk.text_forced:
                text = np.asarray(chunk.force["text_targets"])[text_sl].astype(np.int32)
            heard = out["heard_tokens"][s.slot] if "heard_tokens" in out else None
            o = TurnOutput(int(out["turn"][s.slot]), text, out["mel"][s.slot], dt, forced=chunk.text_forced,
                           heard_tokens=heard)
            s.record_output(o)
            result[s.id] = o
        return result

    def drain(self) -> None:
        """Ticks until no session has pending chunks."""
        while any(s.pending for s in self.sessions.values()):
            self.tick()


__all__ = [
    "Chunk",
    "ChunkError",
    "DelegationScanner",
    "NoCapacityError",
    "Scheduler",
    "Session",
    "SessionClosedError",
    "SessionLimitError",
    "TurnOutput",
    "check_chunk",
    "model_text_pieces",
]
