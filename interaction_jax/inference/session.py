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
`StreamLayout.block_slice`. A session without a pending chunk sits the tick out (its slot is
idle and untouched); sessions join and leave between ticks without affecting the others,
because slots never share state and RNG keys are per session (tested bitwise).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Sequence

import numpy as np

from interaction_jax.background.slots import BackgroundQueue
from interaction_jax.features.mel import mel_to_audio
from interaction_jax.features.video import frame_to_patches
from interaction_jax.inference.cache import SessionLimitError
from interaction_jax.inference.engine import StreamEngine
from interaction_jax.inference.features import StreamingFeatures
from interaction_jax.streams import pack
from interaction_jax.streams.layout import Kind
from interaction_jax.streams.tokenizer import Control, make_tokenizer


class NoCapacityError(RuntimeError):
    """Every engine slot holds an open session."""


class SessionClosedError(RuntimeError):
    """push() on a closed session."""


@dataclasses.dataclass
class Chunk:
    """One micro-turn of user input (see the module docstring)."""

    audio: np.ndarray | None = None  # mono PCM, one micro-turn long; None = silence
    sample_rate: int = 16000
    text: str | Sequence[str] | None = None  # typed messages arriving in this micro-turn
    video: np.ndarray | None = None  # an RGB frame [H, W, 3] uint8 (the last one of the micro-turn)
    background: Sequence = ()  # DelegationEvents polled during this micro-turn


@dataclasses.dataclass
class TurnOutput:
    """What a session's micro-turn produced; it plays during the next micro-turn."""

    turn: int
    text_tokens: np.ndarray  # [model_text_slots] int32
    mel: np.ndarray  # [audio_positions, F, M] log-mel
    latency_s: float  # wall time of the engine tick that produced it


class Session:
    """A conversation bound to one engine slot; created by `Scheduler.open_session`."""

    def __init__(self, scheduler: Scheduler, session_id: str, slot: int, seed: int):
        engine = scheduler.engine
        self.scheduler, self.id, self.slot, self.seed = scheduler, session_id, slot, seed
        self.layout = engine.layout
        self.features = StreamingFeatures(engine.layout, engine.feature_params)
        self.tokenizer = scheduler.tokenizer
        self.background = BackgroundQueue(scheduler.tokenizer)
        self._user_text: collections.deque[int] = collections.deque()
        self.pending: collections.deque[Chunk] = collections.deque()
        self.outputs: list[TurnOutput] = []
        self.turns_fed = 0
        self.closed = False

    # ---- client side ------------------------------------------------------------------------
    def push(self, chunk: Chunk) -> None:
        """Queues one micro-turn of input; it is processed by the next tick that reaches it."""
        if self.closed:
            raise SessionClosedError(f"{self.id}: push() after close()")
        self.scheduler.engine.policy.check_turn(self.turns_fed + len(self.pending), self.id)
        if chunk.video is not None:
            v = np.asarray(chunk.video)
            if v.ndim != 3 or v.shape[2] != 3 or v.dtype != np.uint8:
                raise ValueError(f"{self.id}: video frame must be [H, W, 3] uint8, got {v.shape} {v.dtype}")
        self.pending.append(chunk)

    def close(self) -> None:
        self.scheduler.close(self)

    # ---- scheduler side ---------------------------------------------------------------------
    def fill_inputs(self, inputs: dict[str, np.ndarray], chunk: Chunk) -> None:
        """Writes this session's row (slot) of the engine inputs for its next micro-turn."""
        lay, row = self.layout, self.slot
        texts = [chunk.text] if isinstance(chunk.text, str) else list(chunk.text or [])
        for text in texts:
            self._user_text.extend(self.tokenizer.encode(text) + [int(Control.TEXT_END)])
        if chunk.background:
            self.background.push(list(chunk.background))
        tok = inputs["token_ids"][row]
        tok[:] = int(Control.PAD)
        n = lay.user_text_slots
        ut = [self._user_text.popleft() for _ in range(min(n, len(self._user_text)))]
        tok[lay.block_slice(Kind.USER_TEXT)] = ut + [int(Control.NOTHING)] * (n - len(ut))
        tok[lay.block_slice(Kind.BACKGROUND)] = self.background.take(lay.background_slots)
        inputs["dmel"][row] = 0
        inputs["dmel"][row][lay.block_slice(Kind.USER_AUDIO)] = self.features.push(chunk.audio, chunk.sample_rate)
        inputs["patches"][row] = 0
        inputs["video_present"][row] = False
        if lay.video_patches and chunk.video is not None:
            inputs["patches"][row, 0] = frame_to_patches(chunk.video, lay.video_frame_size, lay.patch_size)
            inputs["video_present"][row, 0] = True
        inputs["active"][row] = True
        inputs["forced"][row] = False
        self.turns_fed += 1

    # ---- results ----------------------------------------------------------------------------
    def transcript(self) -> pack.TimedStreams:
        """Model words / control events / mel so far, on the session clock (pack.unpack)."""
        turns = np.array([o.turn for o in self.outputs], np.int64)
        text = np.stack([o.text_tokens for o in self.outputs]) if self.outputs else np.zeros((0, 0), np.int32)
        mel = np.stack([o.mel for o in self.outputs]) if self.outputs else None
        return pack.unpack(self.layout, self.tokenizer, turns, text, mel)

    def delegations(self) -> list[tuple[float, str]]:
        """(time, request text) of every DELEGATE ... DELEGATE_END the model emitted."""
        return pack.delegation_requests(self.transcript(), self.tokenizer)

    def waveform(self, n_iter: int | None = None) -> np.ndarray:
        """The model's speech so far (Griffin-Lim of its mel frames), starting at transcript().mel_start."""
        eng = self.scheduler.engine
        mel = self.transcript().mel
        iters = int(n_iter if n_iter is not None else eng.config.inference.griffin_lim_iters)
        return mel_to_audio(mel, eng.feature_params, n_iter=iters, length=len(mel) * eng.feature_params.hop_length)


class Scheduler:
    """Maps sessions to engine slots and batches their chunks into one engine tick."""

    def __init__(self, engine: StreamEngine, tokenizer=None):
        self.engine = engine
        self.tokenizer = tokenizer or make_tokenizer(engine.config.text)
        self.sessions: dict[str, Session] = {}
        self._free = list(range(engine.slots))
        self._ids = itertools.count()
        self.latencies: list[float] = []

    def open_session(self, *, seed: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, session_id: str | None = None) -> Session:
        if not self._free:
            raise NoCapacityError(
                f"no capacity: all {self.engine.slots} slots hold open sessions "
                f"({sorted(self.sessions)}); close one or raise inference.slots"
            )
        sid = session_id or f"session-{next(self._ids)}"
        if sid in self.sessions:
            raise ValueError(f"session id {sid!r} is already open")
        slot = self._free.pop(0)
        seed = int(self.engine.config.inference.seed) + slot if seed is None else int(seed)
        self.engine.reset(slot, seed, temperature, top_p)
        session = Session(self, sid, slot, seed)
        self.sessions[sid] = session
        return session

    def close(self, session: Session) -> None:
        """Frees the slot (pending chunks are dropped; outputs stay readable on the session)."""
        if session.closed:
            return
        session.closed = True
        session.pending.clear()
        del self.sessions[session.id]
        self._free.append(session.slot)
        self._free.sort()

    def tick(self) -> dict[str, TurnOutput]:
        """One micro-turn for every session with a pending chunk; {session id: its output}."""
        ready = [s for s in self.sessions.values() if s.pending]
        if not ready:
            return {}
        inputs = self.engine.empty_inputs()
        for s in ready:
            s.fill_inputs(inputs, s.pending.popleft())
        t0 = time.perf_counter()
        out = self.engine.step(inputs)
        dt = time.perf_counter() - t0
        self.latencies.append(dt)
        result = {}
        for s in ready:
            o = TurnOutput(int(out["turn"][s.slot]), out["text_tokens"][s.slot], out["mel"][s.slot], dt)
            s.outputs.append(o)
            result[s.id] = o
        return result

    def drain(self) -> None:
        """Ticks until no session has pending chunks."""
        while any(s.pending for s in self.sessions.values()):
            self.tick()


__all__ = ["Chunk", "NoCapacityError", "Scheduler", "Session", "SessionClosedError", "SessionLimitError", "TurnOutput"]
