"""Packing episodes into the micro-turn layout, and unpacking model outputs into timed streams.

Two stages, so windows are cheap:
  1. `EpisodeGrid.from_episode` (once per episode): features and text streams on the
     micro-turn grid — dMel codes, log-mel targets, slot-filled tokens, video patches.
  2. `pack_window(grid, start, num_turns)`: pure slicing into the fixed-shape arrays of
     `StreamLayout.packed_spec` (one training example, or one streaming micro-turn; `pack_turn`
     gives any micro-turn in the streaming engine's format, also with sparse video).

Time mapping (T = micro-turn length, H = frame hop = 12.5 ms, N = frames per micro-turn):
  * user audio: log-mel frame k is centred at k*H; its analysis window ends at k*H + win/2.
    A frame belongs to the micro-turn in which its window *ends* (strict causality), so
    micro-turn t holds frames [N*t - d, N*t + N - d) with d = ceil(win/2 / H) - 1
    (d = 1 for the dMel settings). Frames before 0 are silence.
  * model audio: micro-turn t produces the frames centred in its output window
    [(t+1)T, (t+2)T) = frames [N(t+1), N(t+2)). Each MODEL_AUDIO position is fed the dMel
    codes of the previous position's frames (the model hears itself); at turn 0 it is fed
    silence.
  * text: see `text_streams.py` (input events at `input_turn`, model words at `output_turn`;
    the user's words as transcript targets after the micro-turn of their end, or with
    `user_speech_timing="at_end"` from the first USER_AUDIO position holding their last frame).
  * video: the last frame that arrived during micro-turn t (with `layout.video_every = k`, the
    last one of micro-turns t-k+1..t, in micro-turns t % k == 0 only: `sparse_frame`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interaction_jax.data.episode import Episode, Word
from interaction_jax.streams import text_streams
from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.tokenizer import NUM_CONTROL, Control


def causal_frame_delay(win_length: int, hop_length: int) -> int:
    """Frames of analysis look-ahead removed so each frame is complete inside its micro-turn."""
    return max(0, -(-(win_length // 2) // hop_length) - 1)


@dataclasses.dataclass
class EpisodeGrid:
    """Per-episode arrays on the micro-turn grid (num_turns = micro-turns covering the episode)."""

    layout: StreamLayout
    num_turns: int
    user_dmel: np.ndarray  # [num_turns * N, M] uint8, frames already shifted for causality
    model_dmel: np.ndarray  # [(num_turns + 1) * N, M] uint8, model frames 0.. (unshifted)
    model_logmel: np.ndarray  # [(num_turns + 2) * N, M] float32 targets (padded with silence)
    model_frames_valid: np.ndarray  # [(num_turns + 2) * N] bool: frame lies inside the episode
    user_text: np.ndarray  # [num_turns, user_text_slots] int32
    background: np.ndarray  # [num_turns, background_slots] int32
    model_text: np.ndarray  # [num_turns, model_text_slots] int32 (targets)
    user_speech: np.ndarray  # [num_turns, audio_positions] int32: user words as text (aux targets)
    prev_model_text: np.ndarray  # [num_turns] int32: last model-text target before turn t
    patches: np.ndarray  # [num_turns, V, ps, ps, 3] uint8 RGB (`shown_frame` adds the deltas of video_delta)
    video_present: np.ndarray  # [num_turns] bool
    overflow: dict  # tokens per stream that did not fit before the episode ended

    @classmethod
    def from_episode(
        cls,
        episode: Episode,
        layout: StreamLayout,
        tokenizer,
        feature_params=None,
        *,
        user_logmel: np.ndarray | None = None,
        model_logmel: np.ndarray | None = None,
        user_speech_timing: str = "next_turn",
    ) -> EpisodeGrid:
        """Computes features (or takes precomputed log-mels) and fills every stream.

        `user_speech_timing` (`model.user_speech_timing`): when a user word's transcript targets
        may start (`text_streams.user_speech_tokens`)."""
        from interaction_jax.features import mel as mel_lib  # host-side only

        params = feature_params or mel_lib.FeatureParams()
        if episode.sample_rate != params.sample_rate:
            raise ValueError(
                f"episode {episode.episode_id}: sample rate {episode.sample_rate} Hz, features expect "
                f"{params.sample_rate} Hz (resample with interaction_jax.features.audio first)"
            )
        expected_frame_ms = 1000.0 * params.hop_length / params.sample_rate
        if abs(expected_frame_ms - layout.frame_ms) > 1e-6:
            raise ValueError(f"layout.frame_ms={layout.frame_ms} but features hop is {expected_frame_ms} ms")
        n_turns = layout.num_turns(episode.duration)
        N = layout.frames_per_turn
        M = layout.n_mels
        if user_logmel is None:
            user_logmel = mel_lib.log_mel(episode.user_audio, params)
        if model_logmel is None:
            model_logmel = mel_lib.log_mel(episode.model_audio, params)
        n_frames_true = 1 + episode.num_samples // params.hop_length

        def padded(x: np.ndarray, total: int, shift: int) -> np.ndarray:
            out = np.full((total, M), params.dmel_min, np.float32)
            src = np.asarray(x, np.float32)[: max(0, total - shift)]
            lo = max(0, -shift)
            out[shift + lo : shift + len(src)] = src[lo:]
            return out

        d = causal_frame_delay(params.win_length, params.hop_length)
        user = padded(user_logmel, n_turns * N, d)
        model = padded(model_logmel, (n_turns + 2) * N, 0)
        valid = np.arange((n_turns + 2) * N) < min(n_frames_true, n_turns * N + N)
        # Model frames beyond the end of the input covered by the episode are not targets.

        ut, ov_u = text_streams.fill_slots(
            text_streams.user_text_tokens(episode, layout, tokenizer), n_turns, layout.user_text_slots
        )
        bg, ov_b = text_streams.fill_slots(
            text_streams.background_tokens(episode, layout, tokenizer), n_turns, layout.background_slots
        )
        mt, ov_m = text_streams.fill_slots(
            text_streams.model_text_tokens(episode, layout, tokenizer), n_turns, layout.model_text_slots
        )
        us, ov_s = text_streams.fill_slots(
            text_streams.user_speech_tokens(episode, layout, tokenizer, user_speech_timing, frame_delay=d),
            n_turns,
            layout.audio_positions,
        )
        if layout.model_text_slots:
            flat = mt.reshape(-1)
            prev = np.concatenate([[int(Control.NOTHING)], flat[:-1]])
            prev_model_text = prev.reshape(n_turns, -1)[:, 0].astype(np.int32)
        else:
            prev_model_text = np.full(n_turns, int(Control.NOTHING), np.int32)

        V, ps = layout.video_patches, layout.patch_size
        patches = np.zeros((n_turns, V, ps, ps, 3), np.uint8)
        present = np.zeros(n_turns, bool)
        if V:
            from interaction_jax.features import video as video_lib

            for frame in sorted(episode.video, key=lambda f: f.time):
                t = layout.input_turn(frame.time)
                if 0 <= t < n_turns:
                    patches[t] = video_lib.frame_to_patches(frame.image, layout.video_frame_size, ps)
                    present[t] = True
        return cls(
            layout=layout,
            num_turns=n_turns,
            user_dmel=mel_lib.dmel_encode(user, params),
            model_dmel=mel_lib.dmel_encode(model, params),
            model_logmel=np.clip(model, params.dmel_min, params.dmel_max).astype(np.float32),
            model_frames_valid=valid,
            user_text=ut,
            background=bg,
            model_text=mt,
            user_speech=us,
            prev_model_text=prev_model_text,
            patches=patches,
            video_present=present,
            overflow={"user_text": ov_u, "background": ov_b, "model_text": ov_m, "user_speech": ov_s},
        )


def pack_window(grid: EpisodeGrid, start: int, num_turns: int) -> dict[str, np.ndarray]:
    """Packs micro-turns [start, start + num_turns) into `layout.packed_spec(num_turns)` arrays.

    Turns past the end of the episode are padding: kinds/positions stay, `valid` is False,
    tokens are PAD, and no loss is taken there.
    """
    layout = grid.layout
    if start < 0:
        raise ValueError(f"window start must be >= 0, got {start}")
    if not layout.uniform:
        return _pack_sparse_video(grid, start, num_turns)
    spec = layout.packed_spec(num_turns)
    out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
    P, F, N = layout.positions_per_turn, layout.frames_per_audio_position, layout.frames_per_turn
    A = layout.audio_positions
    kinds = layout.turn_kinds()
    out["kinds"][:] = np.tile(kinds, num_turns)
    out["positions"][:] = np.arange(num_turns * P, dtype=np.int32)
    turns = start + np.arange(num_turns)
    out["micro_turn"][:] = np.repeat(turns, P).astype(np.int32)
    out["valid"][:] = np.repeat(turns < grid.num_turns, P)

    sl = {k: layout.block_slice(k) for k in Kind}
    tok = out["token_ids"].reshape(num_turns, P)
    tgt = out["text_targets"].reshape(num_turns, P)
    tmask = out["text_loss_mask"].reshape(num_turns, P)
    amask = out["audio_loss_mask"].reshape(num_turns, P)
    speech = out["user_speech_targets"].reshape(num_turns, P)
    dmel = out["dmel"].reshape(num_turns, P, F, -1)
    mel_t = out["mel_targets"].reshape(num_turns, P, F, -1)
    for w, t in enumerate(turns):
        if t >= grid.num_turns:
            continue
        tok[w, sl[Kind.USER_TEXT]] = grid.user_text[t]
        tok[w, sl[Kind.BACKGROUND]] = grid.background[t]
        mt = grid.model_text[t]
        if len(mt):
            tok[w, sl[Kind.MODEL_TEXT]] = np.concatenate([[grid.prev_model_text[t]], mt[:-1]])
            tgt[w, sl[Kind.MODEL_TEXT]] = mt
            tmask[w, sl[Kind.MODEL_TEXT]] = 1.0
        if A:
            speech[w, sl[Kind.USER_AUDIO]] = grid.user_speech[t]
            dmel[w, sl[Kind.USER_AUDIO]] = grid.user_dmel[t * N : (t + 1) * N].reshape(A, F, -1)
            f0 = (t + 1) * N  # first output frame of turn t
            mel_t[w, sl[Kind.MODEL_AUDIO]] = grid.model_logmel[f0 : f0 + N].reshape(A, F, -1)
            fed = grid.model_dmel[f0 - F : f0 + N - F].reshape(A, F, -1).copy()
            if t == 0:
                fed[0] = 0  # nothing has been said before the first output position
            dmel[w, sl[Kind.MODEL_AUDIO]] = fed
            fv = grid.model_frames_valid[f0 : f0 + N].reshape(A, F)
            amask[w, sl[Kind.MODEL_AUDIO]] = fv.all(axis=1).astype(np.float32)
        out["patches"][w], out["video_present"][w] = shown_frame(grid, t)
    return out


def _pack_sparse_video(grid: EpisodeGrid, start: int, num_turns: int) -> dict[str, np.ndarray]:
    """`pack_window` for `layout.video_every = k > 1`: the window packed with video in every
    micro-turn, then the VIDEO positions of the micro-turns between every k-th dropped. A video
    micro-turn t shows the last frame that arrived in micro-turns t-k+1..t (never a later one)."""
    layout = grid.layout
    k = layout.video_every
    if start % k:
        raise ValueError(f"with layout.video_every={k} a window must start at a multiple of {k}, got {start}")
    full = dataclasses.replace(layout, video_every=1)
    out = pack_window(dataclasses.replace(grid, layout=full), start, num_turns)
    keep = np.ones(full.seq_len(num_turns), bool)
    drop = full.kind_indices(Kind.VIDEO, num_turns)[np.arange(num_turns) % k != 0]
    keep[drop.reshape(-1)] = False
    packed = {name: v[keep] for name, v in out.items() if name not in ("patches", "video_present")}
    packed["positions"] = np.arange(int(keep.sum()), dtype=np.int32)
    patches = np.zeros(layout.packed_spec(num_turns)["patches"][0], np.uint8)
    present = np.zeros(layout.video_turns(num_turns), bool)
    for i, t in enumerate(range(start, start + num_turns, k)):
        patches[i], present[i] = shown_frame(grid, t)
    packed["patches"], packed["video_present"] = patches, present
    return packed


def sparse_frame(grid: EpisodeGrid, turn: int) -> tuple[np.ndarray, bool]:
    """(patches [V, ps, ps, 3], present) a video micro-turn `turn` of a `video_every = k` layout
    shows: the last frame that arrived in micro-turns turn-k+1..turn, so a frame that arrived in
    between is not lost and none from later is shown."""
    k = grid.layout.video_every
    got = [j for j in range(max(0, turn - k + 1), min(turn + 1, grid.num_turns)) if grid.video_present[j]]
    if not got:
        return np.zeros(grid.patches.shape[1:], np.uint8), False
    return grid.patches[got[-1]], True


def shown_frame(grid: EpisodeGrid, turn: int) -> tuple[np.ndarray, bool]:
    """(patches [V, ps, ps, layout.video_channels], present) the video micro-turn `turn` holds: its
    `sparse_frame` (with k = 1, the frame of the micro-turn itself), and with `layout.video_delta`
    the change since the frame shown at micro-turn turn - k (`features.video.with_delta`; zero change
    when that one showed none or `turn` is the first). `inference/session.py` applies the same rule."""
    from interaction_jax.features.video import with_delta

    layout = grid.layout
    raw, present = sparse_frame(grid, turn)
    if not layout.video_delta:
        return raw, present
    if not present:
        return np.zeros(raw.shape[:-1] + (layout.video_channels,), np.uint8), False
    k = layout.video_every
    before, seen = sparse_frame(grid, turn - k) if turn - k >= 0 else (None, False)
    return with_delta(raw, before if seen else None), True


def pack_turn(grid: EpisodeGrid, turn: int) -> dict[str, np.ndarray]:
    """Micro-turn `turn` as one row of the streaming engine's inputs (`packed_spec(1)`: every
    position of a micro-turn that holds VIDEO), e.g. for teacher forcing (`Chunk.force`).

    `pack_window(grid, turn, 1)` when the layout is uniform. With `video_every = k > 1` any
    micro-turn works: a video micro-turn (turn % k == 0) holds `sparse_frame`, any other one an
    empty VIDEO block (zeros, not present) whose positions the engine drops.
    """
    layout = grid.layout
    if layout.uniform:
        return pack_window(grid, turn, 1)
    one = pack_window(dataclasses.replace(grid, layout=dataclasses.replace(layout, video_every=1)), turn, 1)
    patches, present = shown_frame(grid, turn) if layout.has_video(turn) else (None, False)
    one["patches"] = np.zeros_like(one["patches"]) if patches is None else patches[None]
    one["video_present"] = np.array([present], bool)
    return one


@dataclasses.dataclass
class TimedStreams:
    """Model output turned back into time: words, control events and mel frames."""

    words: list[Word]
    events: list[tuple[float, str]]  # (time, control token name), e.g. DELEGATE
    tokens: list[tuple[float, int]]  # every non-NOTHING model-text token with its time
    mel: np.ndarray  # [frames, M] log-mel, frame 0 at `mel_start` seconds
    mel_start: float


def unpack(
    layout: StreamLayout,
    tokenizer,
    micro_turns: np.ndarray,
    text_tokens: np.ndarray,
    mel_frames: np.ndarray | None = None,
) -> TimedStreams:
    """Turns per-position model outputs of consecutive micro-turns into timed streams.

    Args:
      micro_turns: [W] absolute micro-turn indices of the rows below (consecutive).
      text_tokens: [W, model_text_slots] tokens emitted in each micro-turn's text slots.
      mel_frames: [W, audio_positions, F, M] generated log-mel (optional).
    Text slot i of micro-turn t is stamped at output_window(t).start + i * T / slots.
    A word's end is the time of its last byte plus one slot.
    """
    micro_turns = np.asarray(micro_turns)
    text_tokens = np.asarray(text_tokens)
    # no micro-turn yet (a session that has produced nothing): empty streams, not a reshape error
    text_tokens = text_tokens.reshape(len(micro_turns), -1 if len(micro_turns) else layout.model_text_slots)
    S = max(text_tokens.shape[1], 1)
    slot_s = layout.micro_turn_s / S
    tokens: list[tuple[float, int]] = []
    for t, row in zip(micro_turns, text_tokens):
        t0 = layout.output_window(int(t))[0]
        for i, tok in enumerate(row.tolist()):
            if tok not in (Control.NOTHING, Control.PAD):
                tokens.append((t0 + i * slot_s, int(tok)))
    words: list[Word] = []
    events: list[tuple[float, str]] = []
    buf: list[int] = []
    buf_start = 0.0
    last_time = 0.0
    in_request = False

    def flush():
        nonlocal buf
        if buf and not in_request:
            text = tokenizer.decode(buf).strip()
            if text:
                words.append(Word(text, buf_start, last_time + slot_s))
        buf = []

    for time, tok in tokens:
        if tok < NUM_CONTROL:
            flush()
            name = Control(tok).name
            events.append((time, name))
            if tok == Control.DELEGATE:
                in_request = True
            elif tok == Control.DELEGATE_END:
                in_request = False
            continue
        if in_request:
            continue
        ch = tokenizer.decode([tok])
        if ch.isspace():
            flush()
            continue
        if not buf:
            buf_start = time
        buf.append(tok)
        last_time = time
    flush()
    if mel_frames is not None and len(micro_turns):
        mel = np.asarray(mel_frames).reshape(-1, layout.n_mels)
    else:
        mel = np.zeros((0, layout.n_mels), np.float32)
    mel_start = layout.output_window(int(micro_turns[0]))[0] if len(micro_turns) else 0.0
    return TimedStreams(words=words, events=events, tokens=tokens, mel=mel, mel_start=mel_start)


def delegation_requests(streams: TimedStreams, tokenizer) -> list[tuple[float, str]]:
    """(time, request text) for every DELEGATE ... DELEGATE_END span in the token stream."""
    out: list[tuple[float, str]] = []
    cur: list[int] | None = None
    t_req = 0.0
    for time, tok in streams.tokens:
        if tok == Control.DELEGATE:
            cur, t_req = [], time
        elif tok == Control.DELEGATE_END and cur is not None:
            out.append((t_req, tokenizer.decode(cur)))
            cur = None
        elif cur is not None and tok >= NUM_CONTROL:
            cur.append(tok)
    return out
