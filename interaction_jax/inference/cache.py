"""The persistent streaming state: KV cache rows, context policy, and per-slot decode state.

One `EngineState` pytree lives on device for the whole life of an engine and is donated to
every micro-turn step, so XLA updates it in place (no reallocation per micro-turn):

    k, v        [layers, slots, rows, kv_heads, head_dim]   the KV cache
    length      [slots] int32   positions consumed by the slot's session (= next absolute position)
    turn        [slots] int32   next micro-turn index of the session
    last_text   [slots] int32   model-text token fed at the first MODEL_TEXT position of the next turn
    last_codes  [slots, F, M] uint8   dMel codes fed at the first MODEL_AUDIO position of the next turn
    key         [slots, 2] uint32     per-session RNG key data (sampling never mixes slots)
    temperature, top_p [slots] float32  per-session sampling settings

Context policy (`ContextPolicy`): positions map to cache rows through a ring with attention
sinks. Rows [0, sinks) hold positions [0, sinks) forever; position p >= sinks lives in row
`sinks + (p - sinks) % ring`. A row's position is a pure function of the slot's length (no
per-row bookkeeping), and a row is visible to a query iff the position it holds is written,
causal and inside the window (or a sink). With ring >= window - 1 + block, writing a block
never evicts a row any of the block's queries still needs, so "sliding" reproduces windowed
training attention exactly and memory stays bounded. "hard" uses the same mapping with a ring
large enough for `max_session_seconds` and never wraps: the scheduler refuses to go past it.

It is the `RowMap` (`model/kv_cache.py`) the model's cache-attention strategies read rows with.

`scratch` extra rows follow the ring: slots that are idle this tick write their (ignored) K/V
there, so an idle slot's cache is never touched and other slots are unaffected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from interaction_jax.model.kv_cache import cache_dtype, cache_shape
from interaction_jax.streams.layout import StreamLayout
from interaction_jax.streams.tokenizer import Control

POLICIES = ("sliding", "hard")


class SessionLimitError(RuntimeError):
    """A session reached the hard context limit (`inference.max_session_seconds`)."""


@dataclasses.dataclass(frozen=True)
class ContextPolicy:
    """Row mapping and attention mask parameters of the KV cache (see the module docstring)."""

    kind: str
    sinks: int  # positions kept visible forever
    window: int  # attention window in positions (0 = full causal)
    ring: int  # rows after the sinks
    scratch: int  # rows for idle slots' writes
    max_turns: int | None  # hard limit in micro-turns (None = unbounded)

    @property
    def wraps(self) -> bool:
        """A ring (a row holds different positions over time): "sliding". "hard" never wraps
        (row == position), so its live rows are the sink and window chunks of the queries."""
        return self.max_turns is None

    @property
    def rows(self) -> int:
        """Rows per slot in the cache (sinks + ring + scratch)."""
        return self.sinks + self.ring + self.scratch

    @classmethod
    def from_config(cls, config, layout: StreamLayout, max_block: int) -> ContextPolicy:
        """Builds the policy from `config.inference` and the model's own window/sinks.

        A model trained with `model.sliding_window > 0` keeps its window and sinks (so streaming
        equals training); otherwise "sliding" adds an inference-time window of
        `inference.window_seconds` with `inference.sink_turns` micro-turns of sinks.
        """
        inf, m = config.inference, config.model
        kind = str(inf.context_policy)
        if kind not in POLICIES:
            raise ValueError(f"inference.context_policy={kind!r}: expected one of {POLICIES}")
        P = layout.positions_per_turn
        model_window, model_sinks = int(m.sliding_window), int(m.attention_sinks)
        if kind == "hard":
            secs = float(inf.max_session_seconds)
            if secs <= 0:
                raise ValueError(f"inference.max_session_seconds must be > 0, got {secs}")
            max_turns = max(1, math.ceil(secs / layout.micro_turn_s - 1e-9))
            sinks = model_sinks if model_window else 0
            ring = layout.seq_len(max_turns) - sinks  # max_turns * P, less with sparse video
            return cls(kind, sinks, model_window, ring, max_block, max_turns)
        if model_window:
            window, sinks = model_window, model_sinks
        else:
            window = max(1, math.ceil(float(inf.window_seconds) / layout.micro_turn_s - 1e-9)) * P
            sinks = layout.seq_len(int(inf.sink_turns))  # the first sink_turns micro-turns
        ring = window - 1 + max_block  # enough that no block evicts a row its queries still need
        return cls(kind, sinks, window, ring, max_block, None)

    # ---- row mapping (jit-side) -----------------------------------------------------------------
    def position_rows(self, p: jax.Array) -> jax.Array:
        """The row that holds (or will hold) absolute position p >= 0 (any shape)."""
        return jnp.where(p < self.sinks, p, self.sinks + (p - self.sinks) % self.ring).astype(jnp.int32)

    def write_rows(self, start: jax.Array, size: int, active: jax.Array) -> jax.Array:
        """Rows [B, size] where positions start[b] + i are written; idle slots (`active` [B] False),
        or single positions (`active` [B, size] False), write to scratch."""
        p = start[:, None] + jnp.arange(size, dtype=jnp.int32)[None, :]
        rows = self.position_rows(p)
        scratch = self.sinks + self.ring + jnp.arange(size, dtype=jnp.int32)[None, :]
        return jnp.where(active[:, None] if active.ndim == 1 else active, rows, scratch).astype(jnp.int32)

    def row_positions(self, length: jax.Array) -> jax.Array:
        """Absolute position held by each row [B, rows] once `length` [B] positions are written (-1: empty)."""
        r = jnp.arange(self.rows, dtype=jnp.int32)[None, :]
        last = length[:, None] - 1
        sink = jnp.where(r < length[:, None], r, -1)
        ring = jnp.where(last >= r, last - (last - r) % self.ring, -1)
        pos = jnp.where(r < self.sinks, sink, ring)
        return jnp.where(r < self.sinks + self.ring, pos, -1)

    # ---- host-side accounting -------------------------------------------------------------------
    def check_turn(self, turn: int, session: str = "session") -> None:
        """Raises SessionLimitError if micro-turn `turn` (0-based) is past the hard limit."""
        if self.max_turns is not None and turn >= self.max_turns:
            raise SessionLimitError(
                f"{session}: reached the hard context limit of {self.max_turns} micro-turns "
                f"(inference.max_session_seconds); close it, or use inference.context_policy='sliding'"
            )


class EngineState(NamedTuple):
    """Everything the micro-turn step carries from one tick to the next (see the module docstring)."""

    k: jax.Array | tuple  # stacked [layers, slots, ...] or split per layer (`init_state`)
    v: jax.Array | tuple
    length: jax.Array
    turn: jax.Array
    last_text: jax.Array
    last_codes: jax.Array
    key: jax.Array
    temperature: jax.Array
    top_p: jax.Array


def init_state(
    *,
    num_layers: int,
    slots: int,
    rows: int,
    kv_heads: int,
    head_dim: int,
    layout: StreamLayout,
    dtype=jnp.float32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    split: bool = False,
) -> EngineState:
    """Allocates the state once (zeros; every slot empty). `split`: K and V split into one buffer
    per layer, [slots, rows, kv_heads * head_dim] ([rows, ...] for one slot) (for strategies with `split_cache`)."""
    shape = (num_layers, slots, rows, kv_heads, head_dim)
    F, M = layout.frames_per_audio_position, layout.n_mels

    def cache():
        if split:
            one = (rows, kv_heads * head_dim) if slots == 1 else (slots, rows, kv_heads * head_dim)
            return tuple(jnp.zeros(one, dtype) for _ in range(num_layers))
        return jnp.zeros(shape, dtype)

    return EngineState(
        k=cache(),
        v=cache(),
        length=jnp.zeros((slots,), jnp.int32),
        turn=jnp.zeros((slots,), jnp.int32),
        last_text=jnp.full((slots,), int(Control.NOTHING), jnp.int32),
        last_codes=jnp.zeros((slots, F, M), jnp.uint8),
        key=jnp.zeros((slots, 2), jnp.uint32),
        temperature=jnp.full((slots,), temperature, jnp.float32),
        top_p=jnp.full((slots,), top_p, jnp.float32),
    )


def reset_slot(
    state: EngineState, slot: jax.Array, key_data: jax.Array, temperature: jax.Array, top_p: jax.Array
) -> EngineState:
    """A fresh session in `slot`: length/turn 0, silence fed back, its own key. K/V rows need no
    clearing: with length 0 every row maps to position -1 (invisible) until written again."""
    F_M = state.last_codes.shape[1:]
    return state._replace(
        length=state.length.at[slot].set(0),
        turn=state.turn.at[slot].set(0),
        last_text=state.last_text.at[slot].set(int(Control.NOTHING)),
        last_codes=state.last_codes.at[slot].set(jnp.zeros(F_M, jnp.uint8)),
        key=state.key.at[slot].set(key_data),
        temperature=state.temperature.at[slot].set(temperature),
        top_p=state.top_p.at[slot].set(top_p),
    )


def memory_report(state: EngineState, policy: ContextPolicy, layout: StreamLayout) -> dict[str, float]:
    """KV-cache bytes per session, per minute of interaction, and the session length they cover."""
    shape = cache_shape(state.k)
    slots = shape[1]
    per_row = 2 * shape[0] * int(np.prod(shape[3:])) * cache_dtype(state.k).itemsize
    per_session = per_row * policy.rows
    per_turn = layout.mean_positions_per_turn  # fewer with sparse video (`layout.video_every`)
    positions_per_min = 60.0 / layout.micro_turn_s * per_turn
    return {
        "policy": policy.kind,
        "slots": slots,
        "bytes_per_position": per_row,
        "kv_bytes_per_session": per_session,
        "kv_bytes_total": per_session * slots,
        # growth a linear (unbounded) cache would need; bounded policies allocate it once
        "kv_bytes_per_minute_linear": per_row * positions_per_min,
        "max_session_seconds": (policy.max_turns * layout.micro_turn_s) if policy.max_turns else float("inf"),
        "window_seconds": (policy.window / per_turn * layout.micro_turn_s) if policy.window else None,
    }
