"""The streaming engine: ONE jitted `stream_step(params, state, inputs) -> (state, outputs)`.

A call processes one micro-turn for every slot: the input block is prefilled, then the output
block is decoded — model text sampled with per-slot temperature / top-p, every model-audio
position's mel frames drawn by the flow-head ODE, dMel-encoded in JAX and fed back as the next
audio position's input (the model hears itself) — all inside one compiled function, with the
`EngineState` (KV cache and per-slot state, `cache.py`) donated so it is updated in place.

Output positions are run in *segments*: a new segment starts at each position whose input is
the sample of the position before it (text slot i > 0 takes text slot i-1's token; audio
position j > 0 takes audio position j-1's codes). Positions whose inputs are already known ride
along, so the default layout needs 7 model calls per micro-turn:
    [input block + text 0] [text 1] [text 2] [text 3 + audio 0] [audio 1] [audio 2] [audio 3].
Segments come from `StreamLayout` (kinds and block slices), never from hard-coded indices.

`inputs` is one micro-turn per slot in the packed format of `StreamLayout.packed_spec(1)`
(token_ids [B, P], dmel [B, P, F, M], patches [B, 1, V, ps, ps, C], video_present [B, 1]) plus
`active` [B] (slot takes part in this tick) and `forced` [B] (teacher forcing: output positions
take the given inputs instead of the samples — `pack.pack_turn(grid, t)` of an episode makes the
engine replay exactly the training sequence); optional `forced_audio` [B] forces only the
model-audio positions (the model hears the given speech while its text is sampled). Idle slots'
state is left untouched.

Sparse video (`layout.video_every = k > 1`): a session's micro-turn t holds VIDEO positions only
when t % k == 0, t counted from the session's own start (`state.turn`, reset to 0), as in a
training window. Slots may be at different phases of k, so the step keeps ONE compiled shape: it
always runs a whole micro-turn's positions, and in a slot's micro-turn without video the VIDEO
positions are invalid queries whose K/V go to scratch rows (never visible), every later position
of the micro-turn takes its absolute position V earlier, and the slot's cache length grows by
P - V. The frame a video micro-turn shows (the last one of its k micro-turns) is the caller's
choice (`session.py`, `pack.pack_turn`); the patches of a micro-turn without video are ignored.
The uniform layout (k = 1) traces none of this.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interaction_jax.features.mel import DMEL_SILENCE_CODE, FeatureParams
from interaction_jax.inference import sampling, sharding
from interaction_jax.inference.cache import ContextPolicy, EngineState, init_state, reset_slot
from interaction_jax.inference.layer_params import (
    EngineGraph,
    EngineParams,
    check_layer_loop,
    merge_engine_params,
    split_engine_params,
)
from interaction_jax.model.interaction_model import InteractionModel
from interaction_jax.model.kv_cache import (
    BlockCache,
    CacheView,
    cache_attention_fn,
    cache_attention_names,
    resolve_strategy,
    wants_split_cache,
)
from interaction_jax.model.moe.experts import available_impls, check_expert_impl
from interaction_jax.model.moe.layer import expert_impl
from interaction_jax.streams.layout import Kind, StreamLayout


def segments(layout: StreamLayout) -> list[tuple[int, int]]:
    """[(start, stop)] of the model calls of one micro-turn (see the module docstring)."""
    kinds = layout.turn_kinds()
    firsts = {k: layout.block_slice(k).start for k in (Kind.MODEL_TEXT, Kind.MODEL_AUDIO)}
    cuts = [
        p
        for p in range(layout.input_size, layout.positions_per_turn)
        if int(kinds[p]) in (int(Kind.MODEL_TEXT), int(Kind.MODEL_AUDIO)) and p != firsts[Kind(int(kinds[p]))]
    ]
    bounds = [0] + cuts + [layout.positions_per_turn]
    return [(a, z) for a, z in zip(bounds[:-1], bounds[1:], strict=True) if z > a]


# `inference.decode_attention`: the cache-attention strategy the engine asks for (`model/kv_cache.py`);
# any other registered strategy name works too.
DECODE_ATTENTION_IMPLS = ("live_window", "live_window_batched", "live_flat", "dense", "pallas", "pallas_interpret")


def check_decode_attention(name: str) -> str:
    """`name` if it names a cache-attention strategy, else a clear error."""
    try:
        cache_attention_fn(name)
    except ValueError:
        raise ValueError(f"inference.decode_attention={name!r}; expected one of {DECODE_ATTENTION_IMPLS} "
                         f"(registered: {cache_attention_names()})") from None
    return name


def engine_strategy(config) -> str:
    """The strategy the engine's blocks read the cache with (`kv_cache.resolve_strategy`)."""
    m = config.model
    requested = check_decode_attention(str(config.inference.get("decode_attention", "live_flat")))
    return resolve_strategy(requested, batch_invariant=bool(m.get("batch_invariant", False)),
                            impl=str(m.attention_impl))


def cached_forward(
    model: InteractionModel,
    block: dict,
    k_all: jax.Array,
    v_all: jax.Array,
    rows: jax.Array,
    kv_positions: jax.Array,
    *,
    policy: ContextPolicy,
    strategy: str = "live_window",
    groups: list | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """A block of S positions through the model's own blocks against the ring cache.

    The cache is the explicit pytree `BlockCache(k_all, v_all, view)` in and out of the model's
    own call (`InteractionModel.__call__`, the training forward's path): K/V go to `rows` [B, S]
    (ring / scratch rows, `ContextPolicy`), and
    attention masks on the absolute position each row holds (`kv_positions` [B, T], -1 empty)
    with the registered strategy `strategy`. The full cache rides in the layer loop's carry and
    only the new rows are scattered in, so with the state donated XLA updates it in place.
    `groups` (the layer-group modules, unstacked: `layer_params.py`) runs the layers over
    per-layer weights instead of scanning the stacked ones. Returns (hidden, text logits, k, v).
    """
    positions = block["positions"]
    mask = block.get("valid")
    q_valid = jnp.ones(positions.shape, bool) if mask is None else mask.astype(bool)
    view = CacheView(rows, positions, kv_positions, q_valid)
    cache = BlockCache(k_all, v_all, view, 0, policy, strategy)
    out, cache = model(block, cache, groups=groups)
    return out["hidden"], out["text_logits"], cache.k, cache.v


SELF_AUDIO = ("generated", "silence")


def make_stream_step(graph: EngineGraph, layout: StreamLayout, policy: ContextPolicy, feature_params, *,
                     debug_outputs: bool = False, strategy: str = "live_window",
                     self_audio: str = "generated"):
    """Builds the pure `stream_step(params, state, inputs) -> (state, outputs)` (see the module docstring).

    `self_audio="silence"` feeds silence (dMel code 0) instead of the model's generated frames at
    its own audio inputs (`inference.self_audio`; forced slots still get the forced frames).

    `graph` / `params` (an `EngineParams`) come from `layer_params.split_engine_params`;
    `strategy` is the cache attention (`engine_strategy(config)`).

    outputs: text_tokens [B, text_slots] int32 (sampled), mel [B, A, F, M] f32, codes [B, A, F, M]
    uint8, heard_tokens [B, A] int32 (the text head's argmax at the USER_AUDIO positions: what a model
    trained with `model.user_speech_loss_weight` > 0 heard the user say, NOTHING between words), turn
    [B] (micro-turn each row belongs to); with `debug_outputs` also text_logits
    [B, text_slots, V] and audio_hidden [B, A, D] (the flow head's conditioning states).
    """
    segs = segments(layout)
    kinds = layout.turn_kinds()
    P = layout.positions_per_turn
    text_sl, audio_sl = layout.block_slice(Kind.MODEL_TEXT), layout.block_slice(Kind.MODEL_AUDIO)
    heard_sl = layout.block_slice(Kind.USER_AUDIO)
    if heard_sl.stop > segs[0][1]:
        raise ValueError("engine: the USER_AUDIO block must lie in the first model call of a micro-turn")
    if self_audio not in SELF_AUDIO:
        raise ValueError(f"inference.self_audio={self_audio!r}; expected one of {SELF_AUDIO}")
    mute_self = self_audio == "silence"
    sparse = not layout.uniform  # video_every = k > 1 (module docstring)
    video_stop, n_video, every = layout.block_slice(Kind.VIDEO).stop, layout.video_patches, layout.video_every

    def stream_step(params: EngineParams, state: EngineState, inputs: dict):
        model, groups = merge_engine_params(graph, params)
        active = inputs["active"].astype(bool)
        forced = inputs["forced"].astype(bool)
        # audio-only forcing (a diagnostic: the model hears the target speech, its text runs free)
        forced_audio = forced | inputs["forced_audio"].astype(bool) if "forced_audio" in inputs else forced
        tok_in = inputs["token_ids"].astype(jnp.int32)
        dmel_in = inputs["dmel"].astype(jnp.uint8)
        B = active.shape[0]
        base = state.length
        tkeys = sampling.turn_keys(state.key, state.turn)
        k_all, v_all = state.k, state.v
        text_feed, codes_feed = state.last_text, state.last_codes
        texts, logits_out, mels, codes_out, hiddens = [], [], [], [], []
        heard_tok = jnp.zeros((B, heard_sl.stop - heard_sl.start), jnp.int32)
        valid = jnp.broadcast_to(active[:, None], (B, P))
        if sparse:  # a micro-turn without video: its VIDEO positions dropped, the rest V earlier
            with_video = state.turn % every == 0
            base = state.length - jnp.where(with_video, 0, n_video).astype(jnp.int32)
            in_turn = jnp.arange(P, dtype=jnp.int32)[None, :]
            valid = valid & (with_video[:, None] | (in_turn >= video_stop))
        for a, z in segs:
            tok, dm = tok_in[:, a:z], dmel_in[:, a:z]
            for p in range(a, z):
                if p >= text_sl.start and p < text_sl.stop:
                    tok = tok.at[:, p - a].set(jnp.where(forced, tok_in[:, p], text_feed))
                if p >= audio_sl.start and p < audio_sl.stop:
                    heard = jnp.full_like(codes_feed, DMEL_SILENCE_CODE) if mute_self else codes_feed
                    dm = dm.at[:, p - a].set(jnp.where(forced_audio[:, None, None], dmel_in[:, p], heard))
            block = {
                "token_ids": tok,
                "dmel": dm,
                "kinds": jnp.broadcast_to(jnp.asarray(kinds[a:z]), (B, z - a)),
                "positions": base[:, None] + jnp.arange(a, z, dtype=jnp.int32)[None, :],
                "micro_turn": jnp.broadcast_to(state.turn[:, None], (B, z - a)),
                "valid": valid[:, a:z],
                "patches": inputs["patches"] if a == 0 else inputs["patches"][:, :0],
                "video_present": inputs["video_present"] if a == 0 else inputs["video_present"][:, :0],
            }
            if sparse:
                rows = policy.write_rows(base + a, z - a, valid[:, a:z])
                kv_pos = policy.row_positions(jnp.where(active, base + z, state.length))
            else:
                rows = policy.write_rows(base + a, z - a, active)
                kv_pos = policy.row_positions(jnp.where(active, base + z, base))
            with jax.named_scope(f"model_call_{a}_{z}"):  # positions [a, z) of the micro-turn, for profiles
                hidden, logits, k_all, v_all = cached_forward(model, block, k_all, v_all, rows, kv_pos,
                                                              policy=policy, strategy=strategy, groups=groups)
            if a == 0:  # what the text head writes at the user's audio: its transcript of the user
                heard_tok = jnp.argmax(logits[:, heard_sl], axis=-1).astype(jnp.int32)
            for p in range(a, z):
                if text_sl.start <= p < text_sl.stop:
                    i = p - text_sl.start
                    keys = sampling.position_keys(tkeys, i)
                    with jax.named_scope("sample_text"):  # scopes label the compiled ops for profiles
                        text_feed = sampling.sample_text(logits[:, p - a], keys, state.temperature, state.top_p)
                    texts.append(text_feed)
                    logits_out.append(logits[:, p - a])
                elif audio_sl.start <= p < audio_sl.stop:
                    j = p - audio_sl.start
                    keys = sampling.position_keys(tkeys, sampling.AUDIO_KEY_OFFSET + j)
                    h = hidden[:, p - a]
                    with jax.named_scope("flow_sample"):
                        mel = model.sample_mel_keys(h, keys)
                    with jax.named_scope("dmel_encode"):
                        codes_feed = sampling.dmel_encode(mel, feature_params)
                    mels.append(mel)
                    codes_out.append(codes_feed)
                    hiddens.append(h)

        def keep(new, old):
            m = active.reshape((B,) + (1,) * (new.ndim - 1))
            return jnp.where(m, new, old)

        new_state = state._replace(
            k=k_all,
            v=v_all,
            length=keep(base + P, state.length),
            turn=keep(state.turn + 1, state.turn),
            last_text=keep(text_feed, state.last_text),
            last_codes=keep(codes_feed, state.last_codes),
        )
        stack = lambda xs, shape: jnp.stack(xs, axis=1) if xs else jnp.zeros(shape)  # noqa: E731
        F, M = layout.frames_per_audio_position, layout.n_mels
        out = {
            "text_tokens": stack(texts, (B, 0)).astype(jnp.int32),
            "mel": stack(mels, (B, 0, F, M)),
            "codes": stack(codes_out, (B, 0, F, M)).astype(jnp.uint8),
            "heard_tokens": heard_tok,
            "turn": state.turn,
        }
        if debug_outputs:
            out["text_logits"] = stack(logits_out, (B, 0, model.vocab_size))
            out["audio_hidden"] = stack(hiddens, (B, 0, model.d_model))
        return new_state, out

    return stream_step


def _spec(tree) -> tuple:
    """Tree structure plus each leaf's shape and dtype (what a compiled step depends on)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(a), np.dtype(a.dtype)) for a in leaves)


class StreamEngine:
    """Owns the split model, the donated device state and the compiled step; slots are dumb.

    `step(inputs)` runs one micro-turn for all slots (see the module docstring for `inputs`);
    `reset(slot, seed)` starts a fresh session in a slot. Sessions / scheduling live in
    `session.py`. Compiles `stream_step` once per (config, slot count, mesh): `compilations()`.
    With `inference.mesh` (`sharding.py`) parameters and cache are placed on that mesh by the
    logical-axis rules; `mesh` is None for one device.
    """

    def __init__(self, config, model: InteractionModel | None = None, *, slots: int | None = None,
                 debug_outputs: bool = False):
        self.config = config
        self.layout = StreamLayout.from_config(config)
        self.slots = int(slots if slots is not None else config.inference.slots)
        if self.slots < 1:
            raise ValueError(f"inference.slots must be >= 1, got {self.slots}")
        model = model if model is not None else InteractionModel(config, rngs=nnx.Rngs(int(config.seed)))
        inf = config.inference
        self.mesh = sharding.serving_mesh(config)  # None: one device, the engine as without a mesh
        moe_impl = str(inf.get("moe_impl", "auto"))  # "model" keeps the model's own backend
        if moe_impl != "model":
            try:
                check_expert_impl(moe_impl)
            except ValueError:
                raise ValueError(f"inference.moe_impl={moe_impl!r}; expected 'model' or one of "
                                 f"{available_impls()}") from None
        if self.mesh is not None:
            moe_impl = sharding.mesh_moe_impl(moe_impl, str(config.model.moe.impl), self.mesh)
        with expert_impl(model, None if moe_impl == "model" else moe_impl):
            self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.layer_loop = check_layer_loop(str(inf.get("layer_loop", "unrolled")))
        self.graph, self.params = split_engine_params(self.graphdef, params, rest, self.layer_loop)
        self._rest, self._spec = rest, _spec((params, rest))
        self.vocab_size, self.d_model = model.vocab_size, model.d_model
        self.segments = segments(self.layout)
        max_block = max(z - a for a, z in self.segments)
        self.policy = ContextPolicy.from_config(config, self.layout, max_block)
        self.feature_params = FeatureParams.from_config(config.features)
        self.strategy = engine_strategy(config)
        # a split cache (one buffer per layer) for the strategies that read it whole; the scanned
        # layer loop (traced layer index) and a mesh (shard_map over the stack) keep the stacked one
        self.split_cache = (wants_split_cache(self.strategy) and self.layer_loop == "unrolled"
                            and self.mesh is None)
        self.state = init_state(
            num_layers=model.backbone.num_layers,
            slots=self.slots,
            rows=self.policy.rows,
            kv_heads=model.num_kv_heads,
            head_dim=model.head_dim,
            layout=self.layout,
            dtype=model.backbone.dtype,
            temperature=float(inf.temperature),
            top_p=float(inf.top_p),
            split=self.split_cache,
        )
        strategy = self.strategy if self.mesh is None else sharding.sharded_strategy(self.strategy, self.mesh)
        step = make_stream_step(self.graph, self.layout, self.policy, self.feature_params,
                                debug_outputs=debug_outputs, strategy=strategy,
                                self_audio=str(inf.get("self_audio", "generated")))
        if self.mesh is None:
            self._step = jax.jit(step, donate_argnums=(1,))
            self._reset = jax.jit(reset_slot, donate_argnums=(0,))
            return
        # on a mesh: fixed in/out shardings, so the donated state keeps its layout and one
        # executable serves every tick
        # (several processes: every process steps the same inputs, `sharding.put`)
        self._param_shardings = sharding.engine_param_shardings(self.params, self.mesh)
        self._state_shardings = sharding.state_shardings(self.state, self.mesh)
        self._slot_sharding = sharding.slot_sharding(self.mesh, self.slots)
        self._replicated = sharding.NamedSharding(self.mesh, sharding.PartitionSpec())
        self.params = sharding.put(self.params, self._param_shardings, self.mesh)
        self.state = sharding.put(self.state, self._state_shardings, self.mesh)
        shards = (self._param_shardings, self._state_shardings, self._slot_sharding)
        self._step = jax.jit(step, donate_argnums=(1,), in_shardings=shards,
                             out_shardings=(self._state_shardings, sharding.output_sharding(self.mesh, self.slots)))
        self._reset = jax.jit(reset_slot, donate_argnums=(0,), out_shardings=self._state_shardings)

    def load_params(self, params, rest=None) -> None:
        """Replaces the parameters (e.g. restored from a checkpoint); same structure as `nnx.split`."""
        new_rest = self._rest if rest is None else rest
        if _spec((params, new_rest)) != self._spec:
            raise ValueError("load_params: the parameters do not fit this engine's model (tree structure, array "
                             "shapes or dtypes differ; was the checkpoint written for another config?)")
        _, new = split_engine_params(self.graphdef, params, new_rest, self.layer_loop)
        if self.mesh is not None:  # resharded device to device (never gathered on the host)
            new = sharding.put(new, self._param_shardings, self.mesh)
        self._rest, self.params = new_rest, new

    def reset(self, slot: int, seed: int, temperature: float | None = None, top_p: float | None = None) -> None:
        inf = self.config.inference
        args = (np.int32(slot), np.asarray(sampling.session_key_data(seed)),
                np.float32(inf.temperature if temperature is None else temperature),
                np.float32(inf.top_p if top_p is None else top_p))
        if sharding.multi_process(self.mesh):
            args = sharding.put(args, self._replicated, self.mesh)
        self.state = self._reset(self.state, *args)

    def empty_inputs(self) -> dict[str, np.ndarray]:
        """Host-side inputs for one tick with every slot idle (fill rows, set `active`)."""
        spec = self.layout.packed_spec(1)
        out = {k: np.zeros((self.slots,) + shape, dtype) for k, (shape, dtype) in spec.items()
               if k in ("token_ids", "dmel", "patches", "video_present")}
        out["active"] = np.zeros(self.slots, bool)
        out["forced"] = np.zeros(self.slots, bool)
        out["forced_audio"] = np.zeros(self.slots, bool)
        return out

    def step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One micro-turn for all slots; returns host numpy outputs."""
        if sharding.multi_process(self.mesh):
            inputs = sharding.put(dict(inputs), self._slot_sharding, self.mesh)
        self.state, out = self._step(self.params, self.state, inputs)
        return jax.tree.map(np.asarray, out)

    def compilations(self) -> int:
        """How many executables the step has compiled (1 after any number of ticks)."""
        return int(self._step._cache_size())
