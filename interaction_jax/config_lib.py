"""Config defaults and loading.

Configs are ml_collections `get_config(arg=None)` files under `configs/` (big_vision style).
Each starts from `base_config()` and overrides what differs. `load_config` is the one entry
point for scripts and tests: it loads a file, applies `a.b.c=value` overrides, and fails with
a clear message on an unknown key.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os

import ml_collections

from interaction_jax.errors import UserError, one_line


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- Micro-turn layout (interaction_jax/streams/layout.py reads only this). ---
    c.layout = ml_collections.ConfigDict()
    c.layout.micro_turn_ms = 200.0
    c.layout.frame_ms = 12.5  # one dMel / log-mel frame (80 frames/s)
    c.layout.frames_per_audio_position = 4  # 4 x 12.5 ms = 50 ms per audio position
    c.layout.video_patches = 16  # patches per micro-turn (0 disables video)
    c.layout.patch_size = 40
    c.layout.video_frame_size = 160  # frames are resized/cropped to this square size
    # a frame's patches every k micro-turns; the others carry no video positions (training only so far)
    c.layout.video_every = 1
    # each VIDEO patch also carries its change since the previous shown frame (3 more channels)
    c.layout.video_delta = False
    c.layout.user_text_slots = 4
    c.layout.background_slots = 4
    c.layout.model_text_slots = 4
    # Audio positions per micro-turn are derived: micro_turn_ms / (frame_ms * frames_per_position).

    # --- Features (interaction_jax/features). dMel exactly as Bai et al. 2024. ---
    c.features = ml_collections.ConfigDict()
    c.features.sample_rate = 16000
    c.features.n_fft = 1024
    c.features.win_length = 800
    c.features.hop_length = 200
    c.features.n_mels = 80
    c.features.fmin = 80.0
    c.features.fmax = 7600.0
    c.features.dmel_bins = 16
    c.features.dmel_min = -7.0
    c.features.dmel_max = 2.0

    # --- Text. ---
    c.text = ml_collections.ConfigDict()
    c.text.tokenizer = "byte"  # "byte" or "sentencepiece"
    c.text.sentencepiece_model = ""

    # --- Data. ---
    c.data = ml_collections.ConfigDict()
    c.data.task = "mix"  # a task name or "mix"
    c.data.data_dir = ""  # prepared data set; empty = generate on the fly
    c.data.eval_data_dir = ""  # prepared held-out set; empty = generate from eval_seed
    c.data.num_episodes = 64
    c.data.eval_num_episodes = 16
    c.data.episode_seconds = 12.0
    c.data.window_micro_turns = 40
    c.data.batch_size = 8
    # task weights that change during training, "STEP:task=w,...;STEP:..." (data/curriculum.py); "" = off
    c.data.curriculum = ""
    c.data.start_at_zero_prob = 0.0  # windows starting at the episode's first micro-turn (see pipeline.RandomWindow)
    c.data.worker_count = 0  # Grain worker processes (0 = in the training process)
    c.data.read_threads = 2  # threads reading ahead inside each process
    c.data.prefetch_batches = 2
    c.data.seed = 0
    c.data.eval_seed = 1_000_003  # disjoint from training seeds
    c.data.on_corrupt_record = "skip"  # "skip" (warn, count, next record) | "stop" (see data/corrupt.py)
    c.data.max_corrupt_records = 100  # with "skip": more distinct corrupt records than this stop the run

    # --- Model. ---
    c.model = ml_collections.ConfigDict()
    c.model.d_model = 256
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 64
    c.model.ffn_dim = 1024
    c.model.layer_pattern = "dense"  # e.g. "dense", "moe", "dense,moe" (repeated to num_layers)
    c.model.rope_theta = 10_000.0
    c.model.sliding_window = 0  # 0 = full causal attention
    c.model.attention_sinks = 0
    c.model.time_embedding = False
    # hMLP video stem: GELU form ("tanh" approximate | "exact" erf) and LayerNorm eps; the paper's code
    # (and torch ports) use "exact" and 1e-5 (docs/model.md)
    c.model.hmlp_gelu = "tanh"
    c.model.hmlp_norm_eps = 1e-6
    # audio positions' embedding: "bag" (the dMel bag: frames and channels summed, linear) or
    # "frames_mlp" (per-frame bags of `dmel_frame_width`, concatenated, a GELU MLP of `dmel_mlp_hidden`)
    c.model.dmel_embed = "bag"
    c.model.dmel_frame_width = 64
    c.model.dmel_mlp_hidden = 512
    c.model.tie_embeddings = True
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.remat = "none"  # "none" | "full" | "dots"
    c.model.scan_layers = True
    c.model.attention_impl = "xla"
    # bitwise-identical outputs whatever the batch / block shape: the training forward and the streaming
    # engine (any slot contents) agree exactly; the one switch for training and inference; dense layers only
    c.model.batch_invariant = False
    c.model.user_text_loss_weight = 0.0  # ablation: also predict the user's typed-text stream
    # auxiliary: write the text of the user's spoken words at the USER_AUDIO positions after they are
    # heard (streams/text_streams.user_speech_tokens); teaches the audio embedding word identity
    c.model.user_speech_loss_weight = 0.0
    # when a word's transcript may start: "next_turn" (the micro-turn after the one the word ends in)
    # or "at_end" (the first user-audio position whose input holds the word's last frame, so the
    # feedback below arrives a micro-turn earlier; streams/text_streams.user_speech_tokens)
    c.model.user_speech_timing = "next_turn"
    # feed that transcript back in: at each USER_AUDIO position the text embedding of what the same
    # slot wrote one micro-turn earlier is added to its dMel embedding (training: the transcript
    # target, teacher-forced; serving: the model's own heard tokens), so a word heard is also a word
    # read, as typed text is (needs user_speech_loss_weight > 0; docs/training.md)
    c.model.user_speech_feedback = False
    # weight of the text-loss positions whose target is NOTHING (silence) relative to the others:
    # below 1 strengthens the speak / stay-silent decision against the silence that dominates
    c.model.text_nothing_loss_weight = 1.0
    c.model.vocab_size = 0  # 0 = the tokenizer's vocabulary; larger pads the text table (sharding)
    c.model.text_loss_weight = 1.0
    c.model.audio_loss_weight = 1.0
    c.model.moe = ml_collections.ConfigDict()
    c.model.moe.num_experts = 8
    c.model.moe.top_k = 2
    c.model.moe.expert_ffn_dim = 512
    c.model.moe.router = "softmax"  # "softmax" | "sigmoid" (bias-balanced)
    c.model.moe.router_bias_rate = 1e-3  # sigmoid router: per-step bias update (DeepSeek-V3's gamma); 0 = off
    c.model.moe.shared_expert = False
    c.model.moe.impl = "ragged_dot"  # "ragged_dot" | "gather" | (kernels) "pallas_gmm" | "gather_gemv"
    c.model.moe.load_balance_weight = 0.01
    c.model.moe.z_loss_weight = 1e-3
    c.model.moe.capacity_factor = 1.25  # expert-parallel only; None = capacity = tokens per device (never drops)
    c.model.flow = ml_collections.ConfigDict()
    c.model.flow.hidden_dim = 256
    c.model.flow.num_layers = 2
    c.model.flow.ode_steps = 8
    c.model.flow.solver = "midpoint"  # "euler" | "midpoint"
    c.model.flow.sigma_min = 1e-4  # conditional OT path: noise scale left at t=1

    # --- Training (interaction_jax/train). ---
    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.learning_rate = 3e-4
    c.train.min_lr_ratio = 0.1
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.1
    c.train.grad_clip_norm = 1.0
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.95
    c.train.grad_accum_steps = 1
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.checkpoint_every = 200
    c.train.keep_last = 3  # keep the newest N checkpoints ...
    c.train.keep_every = 0  # ... plus every K-th step forever (0 = off)
    c.train.async_checkpointing = True
    # Probability that a training window's model-audio *inputs* (the model hearing itself) are
    # silence: robustness to its own generated voice when serving (train/augment.py).
    c.train.self_audio_dropout = 0.0
    # with model.user_speech_feedback: probability that a fed-back transcript word token is replaced
    # by a random one in training (served, the fed tokens are the model's own, sometimes wrong)
    c.train.user_speech_feedback_noise = 0.1
    c.train.on_nonfinite = "stop"  # "stop" | "skip" (skip the update, keep going)

    # --- Mesh (interaction_jax/parallel). Product must equal the device count; -1 = the rest. ---
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.expert = 1
    c.mesh.tensor = 1

    # --- Background model (interaction_jax/background): where delegated requests go. ---
    c.background = ml_collections.ConfigDict()
    c.background.backend = "tool"  # "tool" (calculator/lookup) | "http" (OpenAI-compatible) | "lm" (local LM)
    c.background.url = ""  # http: base URL (e.g. http://127.0.0.1:8000/v1) or the full /chat/completions URL
    c.background.model = ""  # http: model name sent in the request
    c.background.api_key_env = ""  # http: NAME of the environment variable holding the API key (never the key)
    c.background.timeout_s = 30.0  # per job, from when it starts running
    c.background.max_concurrent = 4  # jobs running at once; more wait in a queue
    c.background.tool_delay_s = 0.0  # tool: artificial delay before answering (slow-backend tests)
    # "wall": a result is fed at the first micro-turn after its job finishes (live sessions);
    # "session": deterministic, the result enters the micro-turn whose input window holds
    # request_time + sim_delay_s on the session clock (evaluation / tests; DelegationHub.release_after_s).
    c.background.clock = "wall"
    c.background.sim_delay_s = 2.0  # clock="session": seconds of session time from request to result (data: 1-4 s)

    # --- Streaming inference (interaction_jax/inference): engine slots, sampling, context policy. ---
    c.inference = ml_collections.ConfigDict()
    c.inference.slots = 4  # concurrent sessions one engine serves (batch of the jitted micro-turn step)
    c.inference.temperature = 0.8  # model-text sampling; 0 = greedy
    c.inference.top_p = 0.95  # nucleus sampling mass (1.0 = off)
    c.inference.seed = 0  # base of per-session RNG keys (a session's own seed overrides)
    c.inference.context_policy = "sliding"  # "sliding" (ring-buffer KV, bounded memory) | "hard" (error at the limit)
    c.inference.max_session_seconds = 300.0  # "hard": longest session (KV cache rows = this many positions)
    c.inference.window_seconds = 30.0  # "sliding": attention window when model.sliding_window == 0
    c.inference.sink_turns = 1  # "sliding": leading micro-turns kept visible forever (attention sinks)
    c.inference.griffin_lim_iters = 32  # waveform reconstruction of the model's mel output
    # Engine attention over the cache: "live_flat" (pure JAX; the one-position decode calls read
    # each layer's cache buffer whole, the input block its live key chunks; fastest on the CPU),
    # "live_window" (live key chunks for every call, slot by slot), "live_window_batched" (the
    # same chunks, all slots in one loop) or "pallas" (split-K decode kernel; GPU: Triton, CPU: its
    # reference) / "pallas_interpret" (tests). See model/cache_attention.py.
    c.inference.decode_attention = "live_flat"
    # Layers at decode time: "unrolled" (per-layer weights sliced out of the training stack once;
    # fastest step, see inference/layer_params.py) | "scan" (the stacked weights; faster compile).
    c.inference.layer_loop = "unrolled"
    # MoE expert backend when streaming: "auto" (gather the routed experts' matrices when there are
    # fewer token-slots than experts, else all experts densely on CPU / ragged_dot elsewhere), any
    # model.moe.impl name, or "model" (keep model.moe.impl).
    c.inference.moe_impl = "auto"
    # What the model hears of its own voice when free-running: "generated" (its sampled mel,
    # dMel-encoded) or "silence" (the muted condition of train.self_audio_dropout).
    c.inference.self_audio = "generated"
    # Serving mesh of the engine (inference/sharding.py): the axes and rules table of `mesh`; all 1 =
    # one device (no mesh); -1 = the rest of the devices. E.g. tensor=2, data=4 on 8 devices.
    c.inference.mesh = ml_collections.ConfigDict()
    for axis in ("data", "fsdp", "expert", "tensor"):
        c.inference.mesh[axis] = 1
    return c


class ConfigError(UserError, ValueError):
    """A config file or override is invalid (the message names the field and what was expected)."""


NULLABLE = {"model.moe.capacity_factor"}  # fields where None is a meaningful value


def _kind(value) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _parse_value(text: str, old, key: str = "value"):
    """`text` as the type of the field's current value `old`; a ConfigError naming `key` otherwise."""
    if isinstance(old, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = text
    if value is None and (old is None or key in NULLABLE):
        return None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, (int, float)) and not isinstance(old, bool) and old is not None:
        if type(value) is not type(old):
            raise ConfigError(f"{key}={text!r}: expected {_kind(old)}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets `config.<key>` from a string, refusing keys the config does not define and wrong types."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            where = ".".join(parts[:i]) or "<root>"
            raise ConfigError(
                f"unknown config key {key!r}: {where!r} has no field {part!r}; known fields: {known}"
            )
        if i < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"{key} is a group of fields ({sorted(old.keys())}); override one of them")
    node[parts[-1]] = _parse_value(text, old, key)  # existing key: allowed even on a locked ConfigDict


# ---- validation at load time -------------------------------------------------------------------
# (field, lower bound, upper bound, lower inclusive, upper inclusive); None = unbounded
_RANGES: list[tuple[str, float | None, float | None, bool, bool]] = [
    ("seed", 0, None, True, True),
    ("layout.micro_turn_ms", 0, None, False, True),
    ("layout.frame_ms", 0, None, False, True),
    ("layout.frames_per_audio_position", 1, None, True, True),
    ("layout.patch_size", 1, None, True, True),
    ("layout.video_frame_size", 1, None, True, True),
    ("layout.video_every", 1, None, True, True),
    ("features.sample_rate", 1, None, True, True),
    ("features.n_fft", 1, None, True, True),
    ("features.win_length", 1, None, True, True),
    ("features.hop_length", 1, None, True, True),
    ("features.n_mels", 1, None, True, True),
    ("features.dmel_bins", 2, None, True, True),
    ("model.dmel_frame_width", 1, None, True, True),
    ("model.dmel_mlp_hidden", 1, None, True, True),
    ("data.num_episodes", 1, None, True, True),
    ("data.eval_num_episodes", 1, None, True, True),
    ("data.episode_seconds", 0, None, False, True),
    ("data.window_micro_turns", 1, None, True, True),
    ("data.batch_size", 1, None, True, True),
    ("data.start_at_zero_prob", 0, 1, True, True),
    ("data.worker_count", 0, None, True, True),
    ("data.read_threads", 1, None, True, True),
    ("data.prefetch_batches", 0, None, True, True),
    ("data.max_corrupt_records", 0, None, True, True),
    ("model.d_model", 1, None, True, True),
    ("model.num_layers", 1, None, True, True),
    ("model.num_heads", 1, None, True, True),
    ("model.num_kv_heads", 1, None, True, True),
    ("model.head_dim", 1, None, True, True),
    ("model.ffn_dim", 1, None, True, True),
    ("model.rope_theta", 0, None, False, True),
    ("model.sliding_window", 0, None, True, True),
    ("model.attention_sinks", 0, None, True, True),
    ("model.hmlp_norm_eps", 0, None, False, True),
    ("model.vocab_size", 0, None, True, True),
    ("model.moe.num_experts", 1, None, True, True),
    ("model.moe.top_k", 1, None, True, True),
    ("model.moe.expert_ffn_dim", 1, None, True, True),
    ("model.moe.capacity_factor", 0, None, False, True),
    ("model.flow.hidden_dim", 1, None, True, True),
    ("model.flow.num_layers", 1, None, True, True),
    ("model.flow.ode_steps", 1, None, True, True),
    ("model.flow.sigma_min", 0, 1, True, False),
    ("train.num_steps", 0, None, True, True),
    ("train.learning_rate", 0, None, True, True),
    ("train.min_lr_ratio", 0, 1, True, True),
    ("train.warmup_steps", 0, None, True, True),
    ("train.weight_decay", 0, None, True, True),
    ("train.grad_clip_norm", 0, None, True, True),
    ("train.adam_b1", 0, 1, True, False),
    ("train.adam_b2", 0, 1, True, False),
    ("train.grad_accum_steps", 1, None, True, True),
    ("train.log_every", 1, None, True, True),
    ("train.eval_every", 0, None, True, True),
    ("train.eval_batches", 0, None, True, True),
    ("train.checkpoint_every", 0, None, True, True),
    ("train.keep_last", 0, None, True, True),
    ("train.keep_every", 0, None, True, True),
    ("train.self_audio_dropout", 0, 1, True, True),
    ("train.user_speech_feedback_noise", 0, 1, True, True),
    ("background.timeout_s", 0, None, False, True),
    ("background.max_concurrent", 1, None, True, True),
    ("background.tool_delay_s", 0, None, True, True),
    ("background.sim_delay_s", 0, None, True, True),
    ("inference.slots", 1, None, True, True),
    ("inference.temperature", 0, None, True, True),
    ("inference.top_p", 0, 1, False, True),
    ("inference.max_session_seconds", 0, None, False, True),
    ("inference.window_seconds", 0, None, False, True),
    ("inference.sink_turns", 0, None, True, True),
    ("inference.griffin_lim_iters", 0, None, True, True),
]
_CHOICES: dict[str, tuple[str, ...]] = {
    "text.tokenizer": ("byte", "sentencepiece"),
    "model.remat": ("none", "full", "dots"),
    "model.hmlp_gelu": ("tanh", "exact"),
    "model.dmel_embed": ("bag", "frames_mlp"),
    "model.user_speech_timing": ("next_turn", "at_end"),  # text_streams.USER_SPEECH_TIMINGS
    "model.moe.router": ("softmax", "sigmoid"),
    "model.flow.solver": ("euler", "midpoint"),
    "train.on_nonfinite": ("stop", "skip"),
    "data.on_corrupt_record": ("skip", "stop"),
    "background.backend": ("tool", "http", "lm"),
    "background.clock": ("wall", "session"),
    "inference.context_policy": ("sliding", "hard"),
    "inference.self_audio": ("generated", "silence"),
    "inference.layer_loop": ("unrolled", "scan"),
}
_MISSING = object()


def _get(config, path: str):
    node = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _check_types(config, base, where: str = "") -> None:
    """Every field the defaults define holds a value of the default's type (ints accepted for floats)."""
    for key in base.keys():
        if key not in config:
            continue
        b, v, name = base[key], config[key], f"{where}{key}"
        if isinstance(b, ml_collections.ConfigDict):
            if isinstance(v, ml_collections.ConfigDict):
                _check_types(v, b, name + ".")
            continue
        if v is None and name in NULLABLE:
            continue
        if isinstance(b, bool):
            ok = isinstance(v, bool)
        elif isinstance(b, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(b, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif isinstance(b, str):
            ok = isinstance(v, str)
        else:
            continue
        if not ok:
            raise ConfigError(f"config: {name}={v!r} must be {_kind(b)}")


def validate_config(config) -> None:
    """Checks types, ranges, choices and consistency; raises ConfigError naming the first bad field.

    Runs at load time (`load_config`, `load_run_config`, command-line overrides), so a bad value is
    reported as one line before anything is built or compiled.
    """
    import math

    _check_types(config, base_config())
    for name, lo, hi, lo_in, hi_in in _RANGES:
        v = _get(config, name)
        if v is _MISSING or v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        bad = not math.isfinite(v) or (lo is not None and (v < lo if lo_in else v <= lo)) or (
            hi is not None and (v > hi if hi_in else v >= hi))
        if bad:
            lo_s = "" if lo is None else ("[" if lo_in else "(") + f"{lo}"
            hi_s = "inf)" if hi is None else f"{hi}" + ("]" if hi_in else ")")
            raise ConfigError(f"config: {name}={v!r} is out of range; expected a value in {lo_s}, {hi_s}")
    for name, choices in _CHOICES.items():
        v = _get(config, name)
        if v is not _MISSING and v not in choices:
            raise ConfigError(f"config: {name}={v!r} is not one of {list(choices)}")
    m = config.get("model") if isinstance(config, ml_collections.ConfigDict) else None
    if isinstance(m, ml_collections.ConfigDict) and {"num_heads", "num_kv_heads"} <= set(m.keys()):
        if int(m.num_heads) % int(m.num_kv_heads):
            raise ConfigError(f"config: model.num_heads={m.num_heads} must be a multiple of "
                              f"model.num_kv_heads={m.num_kv_heads} (grouped-query attention)")
        lay = config.get("layout")
        if bool(m.get("user_speech_feedback", False)) and lay is not None and int(lay.get("video_every", 1)) > 1 \
                and int(lay.get("video_patches", 0)) > 0:
            raise ConfigError("config: model.user_speech_feedback needs the same positions in every micro-turn; "
                              "layout.video_every > 1 with video on is not supported with it")
        if bool(m.get("user_speech_feedback", False)) and not float(m.get("user_speech_loss_weight", 0.0)) > 0:
            raise ConfigError("config: model.user_speech_feedback=True feeds back the user-speech transcript, "
                              "which needs model.user_speech_loss_weight > 0 to be learned")
        moe = m.get("moe")
        if isinstance(moe, ml_collections.ConfigDict) and "moe" in str(m.get("layer_pattern", "")):
            if int(moe.top_k) > int(moe.num_experts):
                raise ConfigError(f"config: model.moe.top_k={moe.top_k} must be <= model.moe.num_experts="
                                  f"{moe.num_experts}")
    task = _get(config, "data.task")
    if isinstance(task, str) and task:
        from interaction_jax.data.tasks import check_task

        try:
            check_task(task)
        except ValueError as e:
            raise ConfigError(f"config: data.task={task!r}: {e}") from None
    curriculum = _get(config, "data.curriculum")
    if isinstance(curriculum, str) and curriculum:
        from interaction_jax.data.curriculum import parse_curriculum

        try:
            phases = parse_curriculum(curriculum)
        except ValueError as e:
            raise ConfigError(f"config: {e}") from None
        steps = _get(config, "train.num_steps")
        if isinstance(steps, int) and phases[-1].start_step >= steps:
            raise ConfigError(f"config: data.curriculum's last phase starts at step {phases[-1].start_step}, "
                              f"at or after train.num_steps={steps}: it would never run")
    if "layout" in config and "features" in config:
        from interaction_jax.streams.layout import StreamLayout

        try:
            StreamLayout.from_config(config)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config: {e}") from None


def load_config(path: str, overrides: dict[str, str] | list[str] | None = None, arg: str | None = None):
    """Loads `get_config(arg)` from a config file, applies `key=value` overrides and validates."""
    if ":" in os.path.basename(path) and arg is None:
        path, arg = path.rsplit(":", 1)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist (expected a Python file defining get_config())")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} is not a file (expected a Python file defining get_config())")
    name = f"_ij_config_{abs(hash(path))}"
    loader = importlib.machinery.SourceFileLoader(name, path)  # any file name, not only *.py
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path!r} is not valid Python: {e.msg} (line {e.lineno})") from None
    except (ImportError, NameError, AttributeError, TypeError, ValueError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None)")
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except (TypeError, ValueError, KeyError) as e:
        call = f"get_config({arg!r})" if arg is not None else "get_config()"
        raise ConfigError(f"config file {path!r}: {call} failed: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path!r}: get_config() returned {type(config).__name__}, not a ConfigDict")
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides or []]
    for key, value in items:
        apply_override(config, key.removeprefix("config."), str(value))
    validate_config(config)
    config.lock()
    return config


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key, value


def check_cli_overrides(argv: list[str], flag: str = "config") -> None:
    """Validates `--config.a.b=v` overrides against the `--config=FILE` before absl parses them.

    ml_collections' own failure for a typo is a bare AttributeError; this exits with a message
    naming the unknown key and the fields that do exist.
    """
    import sys

    path, overrides = None, []
    for arg in argv[1:]:
        if arg.startswith(f"--{flag}="):
            path = arg.split("=", 1)[1]
        elif arg.startswith(f"--{flag}.") and "=" in arg:
            overrides.append(arg[len(f"--{flag}.") :])
    if path is None or not overrides:
        return
    try:
        load_config(path, overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")


RUN_CONFIG = "config.json"  # written into every training run directory by the trainer


def save_run_config(config, workdir: str) -> str:
    """Writes the run's resolved config to `workdir/config.json` so that evaluation and streaming
    can rebuild the exact model without the original file and overrides.

    Atomic: the text is serialised first (a config that cannot be serialised never touches the
    directory), written and fsynced to a temporary file, then renamed over `config.json`; on any
    failure the temporary file is removed, so neither a half-written nor an empty file is left.
    """
    import json
    import os

    text = json.dumps(json.loads(config.to_json()), indent=1, sort_keys=True)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RUN_CONFIG)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_run_config(workdir: str):
    """The config a training run saved (`save_run_config`), on top of `base_config()` for the types."""
    import json
    import os

    path = os.path.join(workdir, RUN_CONFIG)
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the run's config ({e}); pass --config=FILE") from e

    config = base_config()

    def check(node, d, where):
        for k, v in d.items():
            if k not in node:
                raise ConfigError(f"{path}: unknown key {where}{k} (saved by another version?); pass --config=FILE")
            if isinstance(v, dict) and isinstance(node[k], ml_collections.ConfigDict):
                check(node[k], v, f"{where}{k}.")
            elif not isinstance(node[k], ml_collections.ConfigDict):
                probe = ml_collections.ConfigDict({k: v})
                try:
                    _check_types(probe, ml_collections.ConfigDict({k: node[k]}), where)
                except ConfigError as e:
                    raise ConfigError(f"{path}: {e}; pass --config=FILE") from None

    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields, got {type(saved).__name__}; "
                          "pass --config=FILE")
    check(config, saved, "")
    try:
        config.update(saved)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{path}: {one_line(e)}; pass --config=FILE") from None
    try:
        validate_config(config)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}; pass --config=FILE") from None
    return config


def config_for_run(config, workdir: str | None, default_path: str):
    """`--config` if given, else the run directory's saved config, else `default_path`."""
    import os

    if config is not None:
        return config
    if workdir and os.path.exists(os.path.join(workdir, RUN_CONFIG)):
        print(f"[config] using {os.path.join(workdir, RUN_CONFIG)}")
        return load_run_config(workdir)
    return load_config(default_path)
