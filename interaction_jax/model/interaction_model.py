"""The interaction model: packed multimodal sequence -> backbone -> text logits + mel flow head.

    batch (streams/layout.py `packed_spec`, leading batch axis B)
      -> InputEmbedding (kind + text | dMel bag | hMLP patch, per position)
      -> Transformer (pre-norm GQA + dense/MoE blocks, scanned)
      -> hidden [B, L, D] -> TextHead (text logits)   and   FlowHead (mel frames, via loss/sampling)

Used functionally (docs/design.md): the trainer splits the module once and calls
`forward(graphdef, state, batch, rng)` under `jax.jit`/`jax.grad`. Streaming: `init_cache`
allocates the explicit KV cache, and `step(block, cache)` runs any contiguous block of packed
positions (a micro-turn's input block, one output position, a whole turn ...) against it;
running a window block by block gives the same outputs as `__call__` on the whole window.
Targets are already aligned by the packer (position p carries the token / mel frames that
position p must predict), so no shifting happens here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from interaction_jax.model.embeddings import InputEmbedding
from interaction_jax.model.flow import FlowHead
from interaction_jax.model.heads import TextHead
from interaction_jax.model.kv_cache import BlockCache
from interaction_jax.model.transformer import KVCache, Transformer
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.tokenizer import NUM_CONTROL, Control, make_tokenizer


def model_vocab_size(config) -> int:
    """Text vocabulary of the model: `model.vocab_size` if set (>= the tokenizer's), else the tokenizer's."""
    tok = make_tokenizer(config.text).vocab_size
    want = int(config.model.get("vocab_size", 0) or 0)
    if want and want < tok:
        raise ValueError(f"model.vocab_size={want} is smaller than the tokenizer's vocabulary ({tok})")
    return want or tok


class InteractionModel(nnx.Module):
    """Built from a full config: `InteractionModel(config, rngs=nnx.Rngs(0))`."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        m = config.model
        layout = StreamLayout.from_config(config)
        dtype, param_dtype = jnp.dtype(m.dtype), jnp.dtype(m.param_dtype)
        self.d_model = int(m.d_model)
        self.num_kv_heads = int(m.num_kv_heads)
        self.head_dim = int(m.head_dim)
        self.vocab_size = model_vocab_size(config)
        self.ode_steps = int(m.flow.ode_steps)
        self.solver = str(m.flow.solver)
        bi = bool(m.get("batch_invariant", False))
        self.batch_invariant = bi
        self.embed = InputEmbedding(
            d_model=self.d_model,
            vocab_size=self.vocab_size,
            n_mels=layout.n_mels,
            frames_per_position=layout.frames_per_audio_position,
            dmel_bins=int(config.features.dmel_bins),
            patch_size=layout.patch_size,
            video_patches=layout.video_patches,
            video_channels=layout.video_channels,
            time_embedding=bool(m.time_embedding),
            dtype=dtype,
            param_dtype=param_dtype,
            batch_invariant=bi,
            hmlp_gelu=str(m.get("hmlp_gelu", "tanh")),  # .get: run configs saved before these keys existed
            hmlp_norm_eps=float(m.get("hmlp_norm_eps", 1e-6)),
            dmel_embed=str(m.get("dmel_embed", "bag")),
            dmel_frame_width=int(m.get("dmel_frame_width", 64)),
            dmel_mlp_hidden=int(m.get("dmel_mlp_hidden", 512)),
            user_speech_feedback=bool(m.get("user_speech_feedback", False)),
            rngs=rngs,
        )
        self.positions_per_turn = layout.positions_per_turn
        self.backbone = Transformer(m, rngs=rngs)
        self.text_head = TextHead(
            self.d_model, self.vocab_size, tied=bool(m.tie_embeddings), param_dtype=param_dtype, batch_invariant=bi,
            rngs=rngs
        )
        self.flow = FlowHead(
            self.d_model,
            frames=layout.frames_per_audio_position,
            n_mels=layout.n_mels,
            hidden_dim=int(m.flow.hidden_dim),
            num_layers=int(m.flow.num_layers),
            sigma_min=float(m.flow.get("sigma_min", 1e-4)),
            dtype=dtype,
            param_dtype=param_dtype,
            batch_invariant=bi,
            rngs=rngs,
        )

    def text_logits(self, hidden: jax.Array) -> jax.Array:
        """Text logits [..., V] (float32) of backbone hidden states: the text head tied to the embedding."""
        return self.text_head(hidden, self.embed.text)

    def __call__(
        self, batch: dict, cache: BlockCache | None = None, groups=None
    ) -> dict | tuple[dict, BlockCache]:
        """The one forward path: {text_logits [B,L,V] f32, hidden [B,L,D], aux (MoE losses)}.

        Without a cache: teacher forcing over the whole window (training). With a `BlockCache`
        (the streaming engine, `step`): `batch` is a block of packed positions run against the
        cache (its row layout and attention strategy, `kv_cache.py`); returns (outputs, the cache
        with the block's K/V). `groups`: unstacked per-layer weights (`inference/layer_params.py`).
        """
        with jax.named_scope("embed"):  # scopes label the compiled ops for profiles
            x = self.embed(batch)
        if cache is None:
            hidden, aux = self.backbone(x, batch["positions"], batch.get("valid"))
            with jax.named_scope("text_head"):
                return {"text_logits": self.text_logits(hidden), "hidden": hidden, "aux": aux}
        hidden, aux, cache = self.backbone.cached(x, batch["positions"], cache, batch.get("valid"), groups)
        with jax.named_scope("text_head"):
            return {"text_logits": self.text_logits(hidden), "hidden": hidden, "aux": aux}, cache

    # ---- streaming ------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        """Empty KV cache for `batch_size` slots of `max_len` positions (lengths = 0)."""
        return self.backbone.init_cache(batch_size, max_len, self.num_kv_heads, self.head_dim)

    def step(self, block: dict, cache: KVCache) -> tuple[dict, KVCache]:
        """Runs a block of S packed positions (same keys as a batch, length S; `patches` holds the
        micro-turns whose VIDEO positions are in the block, [B, W', V, ...], W' may be 0) at each
        slot's cache offset. Returns ({text_logits, hidden, aux}, cache with lengths + S)."""
        x = self.embed(block)
        hidden, aux, cache = self.backbone.step(x, block["positions"], cache, block.get("valid"))
        return {"text_logits": self.text_logits(hidden), "hidden": hidden, "aux": aux}, cache

    def sample_mel(
        self, hidden: jax.Array, rng: jax.Array, steps: int | None = None, solver: str | None = None
    ) -> jax.Array:
        """Mel frames [..., F, M] (log-mel) for backbone states [..., D] with the configured ODE sampler."""
        return self.flow.sample(hidden, rng, steps=steps or self.ode_steps, solver=solver or self.solver)

    def sample_mel_keys(self, hidden: jax.Array, keys: jax.Array) -> jax.Array:
        """Mel frames [N, F, M] for states [N, D], position n drawing its noise from keys[n].

        Bitwise `sample_mel(hidden[n], keys[n])` for every n in batch-invariant mode, and the
        same in value otherwise; the head runs once on the whole batch.
        """
        x0 = jax.vmap(lambda k: self.flow.noise(k))(keys)
        return self.flow.sample_from(hidden, x0, steps=self.ode_steps, solver=self.solver)


def text_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(masked mean cross-entropy, masked accuracy) over positions with mask > 0."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    m = mask.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(m), 1.0)
    acc = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * m) / denom
    return jnp.sum(ce * m) / denom, acc


def loss_weights(config) -> dict[str, float]:
    m = config.model
    return {
        "text": float(m.get("text_loss_weight", 1.0)),
        "audio": float(m.get("audio_loss_weight", 1.0)),
        "load_balance": float(m.moe.load_balance_weight),
        "z_loss": float(m.moe.z_loss_weight),
        "user_text": float(m.get("user_text_loss_weight", 0.0)),
        "user_speech": float(m.get("user_speech_loss_weight", 0.0)),
        "text_nothing": float(m.get("text_nothing_loss_weight", 1.0)),
    }


def user_speech_feedback(batch: dict, positions_per_turn: int, rng: jax.Array | None = None,
                         noise: float = 0.0, vocab_size: int = 0) -> dict:
    """`batch` with the transcript fed back: `token_ids` at each USER_AUDIO position = the
    user-speech target of the same slot one micro-turn earlier (NOTHING in a window's first
    micro-turn), what a served model with `model.user_speech_feedback` is fed from its own heard
    tokens (`inference/session.py`). With `noise` > 0 (training), each fed word token is replaced
    by a uniformly random word token with that probability, so the model learns not to trust a
    misheard word blindly. A batch without `user_speech_targets` is returned unchanged."""
    if "user_speech_targets" not in batch:
        return batch
    targets = batch["user_speech_targets"].astype(jnp.int32)
    P = int(positions_per_turn)
    nothing = jnp.full_like(targets[:, :P], int(Control.NOTHING))
    fed = jnp.concatenate([nothing, targets[:, :-P]], axis=1)  # position p reads target p - P
    if noise > 0.0:
        if rng is None or vocab_size <= NUM_CONTROL:
            raise ValueError("user_speech_feedback: noise needs an rng and the vocabulary size")
        k_flip, k_tok = jax.random.split(rng)
        flip = jax.random.bernoulli(k_flip, noise, fed.shape) & (fed >= NUM_CONTROL)
        fed = jnp.where(flip, jax.random.randint(k_tok, fed.shape, NUM_CONTROL, vocab_size, jnp.int32), fed)
    is_audio = batch["kinds"] == int(Kind.USER_AUDIO)
    return {**batch, "token_ids": jnp.where(is_audio, fed, batch["token_ids"])}


def forward(
    graphdef: nnx.GraphDef,
    state,
    batch: dict,
    rng: jax.Array,
    *extra_states,
    weights: dict[str, float] | None = None,
    user_text_pairs: tuple | None = None,
    feedback_noise: float = 0.0,
) -> tuple[jax.Array, dict]:
    """Pure training/eval forward: (loss, metrics). `state` (e.g. the nnx.Param state) and any
    `extra_states` are merged with `graphdef`; `rng` draws the flow-matching noise and times.
    `weights` (see `loss_weights(config)`) default to 1 for text/audio and the MoE defaults.
    `user_text_pairs` = (source, target) position indices of consecutive USER_TEXT slots
    (`user_text_pairs(layout, W)`); with `weights["user_text"] > 0` the model also learns to
    predict the user's text stream (an ablation switch, `model.user_text_loss_weight`). With
    `weights["user_speech"] > 0` (`model.user_speech_loss_weight`) it also writes, at each
    USER_AUDIO position, the text of the user's words heard so far (`user_speech_targets`); a
    model built with `model.user_speech_feedback` is fed that transcript one micro-turn later
    (`user_speech_feedback`, word tokens replaced at random with probability `feedback_noise`)."""
    w = {"text": 1.0, "audio": 1.0, "load_balance": 0.01, "z_loss": 1e-3}
    w.update(weights or {})
    model = nnx.merge(graphdef, state, *extra_states)
    if model.embed.user_speech_feedback:
        rng, k_feed = jax.random.split(rng)
        batch = user_speech_feedback(batch, model.positions_per_turn, k_feed, feedback_noise, model.vocab_size)
    out = model(batch)
    t_mask = batch["text_loss_mask"]
    if w.get("text_nothing", 1.0) != 1.0:
        # the speak / stay-silent decision: NOTHING targets (silence) dominate the text stream, so a
        # weight below 1 makes the tokens that start or continue speech count for more
        t_mask = t_mask * jnp.where(batch["text_targets"] == int(Control.NOTHING), w["text_nothing"], 1.0)
    t_loss, _ = text_loss(out["text_logits"], batch["text_targets"], t_mask)
    _, t_acc = text_loss(out["text_logits"], batch["text_targets"], batch["text_loss_mask"])
    a_loss = model.flow.loss(out["hidden"], batch["mel_targets"], batch["audio_loss_mask"], rng)
    aux = out["aux"]
    loss = (
        w["text"] * t_loss
        + w["audio"] * a_loss
        + w["load_balance"] * aux["load_balance_loss"]
        + w["z_loss"] * aux["z_loss"]
    )
    metrics = {
        "loss": loss,
        "text_loss": t_loss,
        "text_accuracy": t_acc,
        "audio_loss": a_loss,
        "load_balance_loss": aux["load_balance_loss"],
        "z_loss": aux["z_loss"],
    }
    if user_text_pairs is not None and w.get("user_text", 0.0) > 0.0:
        # ablation: also predict the user's typed-text stream (next user-text token)
        src, dst = user_text_pairs
        logits_u = out["text_logits"][:, src]
        targets_u = batch["token_ids"][:, dst]
        mask_u = batch["valid"][:, dst].astype(jnp.float32)
        u_loss, _ = text_loss(logits_u, targets_u, mask_u)
        loss = loss + w["user_text"] * u_loss
        metrics["loss"] = loss
        metrics["user_text_loss"] = u_loss
    if w.get("user_speech", 0.0) > 0.0 and "user_speech_targets" in batch:
        # auxiliary: transcribe what the user just said at its USER_AUDIO positions
        speech_mask = (batch["kinds"] == int(Kind.USER_AUDIO)) & batch["valid"]
        s_loss, s_acc = text_loss(out["text_logits"], batch["user_speech_targets"], speech_mask)
        loss = loss + w["user_speech"] * s_loss
        metrics["loss"] = loss
        metrics["user_speech_loss"] = s_loss
        metrics["user_speech_accuracy"] = s_acc
        # the same on word tokens only: NOTHING targets (no word just ended) are most positions
        words = speech_mask & (batch["user_speech_targets"] != int(Control.NOTHING))
        metrics["user_speech_word_accuracy"] = text_loss(out["text_logits"], batch["user_speech_targets"], words)[1]
    if "expert_counts" in aux:
        metrics["expert_counts"] = aux["expert_counts"]
        metrics["expert_counts_per_layer"] = aux["expert_counts_per_layer"]
        metrics["moe/dropped_fraction"] = aux["dropped_fraction"]
    return loss, metrics


def user_text_pairs(layout: StreamLayout, num_turns: int):
    """(source, target) indices: each USER_TEXT position and the next USER_TEXT position after it."""
    import numpy as np


    idx = layout.kind_indices(Kind.USER_TEXT, num_turns).reshape(-1)
    return np.asarray(idx[:-1]), np.asarray(idx[1:])


def dummy_batch(config, batch_size: int, num_turns: int, seed: int = 0) -> dict:
    """A random batch with the exact packed layout (kinds/positions from the layout, random
    contents, losses on the model-output kinds). For tests, shape checks and benchmarks."""
    import numpy as np

    from interaction_jax.streams.layout import Kind

    layout = StreamLayout.from_config(config)
    spec = layout.packed_spec(num_turns)
    rs = np.random.RandomState(seed)
    b = batch_size
    kinds = layout.window_kinds(num_turns)
    offsets = layout.turn_offsets(num_turns)
    vocab = make_tokenizer(config.text).vocab_size
    out = {
        "token_ids": rs.randint(0, vocab, (b,) + spec["token_ids"][0]),
        "dmel": rs.randint(0, int(config.features.dmel_bins), (b,) + spec["dmel"][0]),
        "patches": rs.randint(0, 256, (b,) + spec["patches"][0]),
        "video_present": rs.rand(b, layout.video_turns(num_turns)) < 0.7,
        "kinds": np.broadcast_to(kinds, (b, kinds.size)),
        "positions": np.broadcast_to(np.arange(kinds.size), (b, kinds.size)),
        "micro_turn": np.broadcast_to(np.searchsorted(offsets, np.arange(kinds.size), side="right") - 1,
                                      (b, kinds.size)),
        "valid": np.ones((b, kinds.size), bool),
        "text_targets": rs.randint(0, vocab, (b,) + spec["text_targets"][0]),
        "text_loss_mask": np.broadcast_to(kinds == int(Kind.MODEL_TEXT), (b, kinds.size)),
        "mel_targets": rs.uniform(-7.0, 2.0, (b,) + spec["mel_targets"][0]),
        "audio_loss_mask": np.broadcast_to(kinds == int(Kind.MODEL_AUDIO), (b, kinds.size)),
        "user_speech_targets": rs.randint(0, vocab, (b,) + spec["user_speech_targets"][0]),
    }
    return {k: jnp.asarray(np.asarray(v).astype(spec[k][1])) for k, v in out.items()}


def block_of(batch: dict, start: int, stop: int, layout: StreamLayout) -> dict:
    """The streaming block of positions [start, stop) of a packed window (host-side, static).

    Per-position arrays are sliced; `patches` / `video_present` keep the micro-turns whose VIDEO
    positions lie in the block (a block must not cut a video block in two).
    """
    from interaction_jax.streams.layout import Kind

    layout.require_uniform("block_of")
    seq = batch["kinds"].shape[1]
    turns = []
    vs = layout.block_slice(Kind.VIDEO)
    for t in range(seq // layout.positions_per_turn):
        lo, hi = t * layout.positions_per_turn + vs.start, t * layout.positions_per_turn + vs.stop
        if hi <= lo or hi <= start or lo >= stop:
            continue
        if lo < start or hi > stop:
            raise ValueError(f"block [{start}, {stop}) cuts micro-turn {t}'s video positions [{lo}, {hi})")
        turns.append(t)
    out = {}
    for k, v in batch.items():
        if k in ("patches", "video_present"):
            out[k] = v[:, turns[0] : turns[-1] + 1] if turns else v[:, :0]
        else:
            out[k] = v[:, start:stop]
    return out
