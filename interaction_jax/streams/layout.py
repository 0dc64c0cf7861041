"""The micro-turn layout: the single source of truth for how streams become one sequence.

Time is cut into micro-turns of `micro_turn_ms` (200 ms). Every micro-turn has the same
positions, in the same order (the default, numbers from the config):

    | video | user text | background | user audio | model text | model audio |
    |  16   |     4     |     4      |     4      |     4      |      4      |
    '------------------ input block -------------' '---- output block ----'

Input block of micro-turn t: what arrived in [t*T, (t+1)*T) (T = micro-turn length).
Output block of micro-turn t: what the model says in [(t+1)*T, (t+2)*T); it is decoded after
the input block of t is prefilled and played during micro-turn t+1, so the response-latency
floor is one micro-turn. Training (packing) and streaming inference both read this class;
nothing else may re-derive position indices.

Video rate: with `video_every = k > 1` only micro-turns 0, k, 2k, ... (counted from the start of
a session, or of a training window, which then starts at a multiple of k) hold the VIDEO block
and the frame that arrived last during their k micro-turns; the other micro-turns have no video
positions at all (dropped from the sequence, not filled with empty patches). Positions stay the
sequence index, a fixed function of time. Packing, the model and the streaming engine read such
layouts (the engine counts micro-turns from each session's own start, `inference/engine.py`);
`uniform` says whether every micro-turn has the same positions.

Frame deltas: with `video_delta` every patch carries 6 channels, the frame's RGB and its change
since the frame shown at the previous video micro-turn (`features.video.with_delta`: zero change
when that micro-turn showed none), so a model sees *what changed* without having to compare
two positions. Packing and the streaming session compute it with the same function.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Kind(enum.IntEnum):
    """Slot type of a position; also the index of its learned kind embedding."""

    VIDEO = 0
    USER_TEXT = 1
    BACKGROUND = 2
    USER_AUDIO = 3
    MODEL_TEXT = 4
    MODEL_AUDIO = 5


NUM_KINDS = len(Kind)
TEXT_KINDS = (Kind.USER_TEXT, Kind.BACKGROUND, Kind.MODEL_TEXT)
AUDIO_KINDS = (Kind.USER_AUDIO, Kind.MODEL_AUDIO)
OUTPUT_KINDS = (Kind.MODEL_TEXT, Kind.MODEL_AUDIO)


@dataclasses.dataclass(frozen=True)
class Block:
    """A contiguous run of same-kind positions inside every micro-turn."""

    kind: Kind
    size: int
    direction: str  # "in" | "out"
    loss: str | None  # "text" | "audio" | None


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """Static description of one micro-turn; see the module docstring for the default."""

    micro_turn_ms: float = 200.0
    frame_ms: float = 12.5
    frames_per_audio_position: int = 4
    n_mels: int = 80
    patch_size: int = 40
    video_frame_size: int = 160
    video_patches: int = 16
    user_text_slots: int = 4
    background_slots: int = 4
    model_text_slots: int = 4
    video_every: int = 1  # a frame's patches every k micro-turns (module docstring)
    video_delta: bool = False  # patches carry RGB and the change since the last shown frame (module docstring)

    def __post_init__(self):
        ratio = self.micro_turn_ms / (self.frame_ms * self.frames_per_audio_position)
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(
                f"layout: micro_turn_ms={self.micro_turn_ms} must be a whole multiple of "
                f"frame_ms*frames_per_audio_position={self.frame_ms * self.frames_per_audio_position}"
            )
        if self.video_patches:
            side = self.video_frame_size // self.patch_size
            if self.video_frame_size % self.patch_size or side * side != self.video_patches:
                raise ValueError(
                    f"layout: video_patches={self.video_patches} must equal (video_frame_size/patch_size)^2 "
                    f"with video_frame_size={self.video_frame_size} a multiple of patch_size={self.patch_size}"
                )
        for name in ("user_text_slots", "background_slots", "model_text_slots", "video_patches"):
            if getattr(self, name) < 0:
                raise ValueError(f"layout: {name} must be >= 0, got {getattr(self, name)}")
        if self.video_every < 1:
            raise ValueError(f"layout: video_every must be >= 1 (a frame every k micro-turns), got {self.video_every}")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config) -> StreamLayout:
        """Builds the layout from a full config (reads `config.layout` and `config.features.n_mels`)."""
        lc = config.layout
        return cls(
            micro_turn_ms=float(lc.micro_turn_ms),
            frame_ms=float(lc.frame_ms),
            frames_per_audio_position=int(lc.frames_per_audio_position),
            n_mels=int(config.features.n_mels),
            patch_size=int(lc.patch_size),
            video_frame_size=int(lc.video_frame_size),
            video_patches=int(lc.video_patches),
            user_text_slots=int(lc.user_text_slots),
            background_slots=int(lc.background_slots),
            model_text_slots=int(lc.model_text_slots),
            video_every=int(lc.get("video_every", 1)),
            video_delta=bool(lc.get("video_delta", False)),  # .get: run configs saved before the key existed
        )

    # ---- derived sizes --------------------------------------------------------------------
    @property
    def micro_turn_s(self) -> float:
        return self.micro_turn_ms / 1000.0

    @property
    def audio_positions(self) -> int:
        """Audio positions per micro-turn (same for user input and model output)."""
        return int(round(self.micro_turn_ms / (self.frame_ms * self.frames_per_audio_position)))

    @property
    def frames_per_turn(self) -> int:
        return self.audio_positions * self.frames_per_audio_position

    @property
    def blocks(self) -> tuple[Block, ...]:
        blocks = (
            Block(Kind.VIDEO, self.video_patches, "in", None),
            Block(Kind.USER_TEXT, self.user_text_slots, "in", None),
            Block(Kind.BACKGROUND, self.background_slots, "in", None),
            Block(Kind.USER_AUDIO, self.audio_positions, "in", None),
            Block(Kind.MODEL_TEXT, self.model_text_slots, "out", "text"),
            Block(Kind.MODEL_AUDIO, self.audio_positions, "out", "audio"),
        )
        return tuple(b for b in blocks if b.size > 0)

    @property
    def positions_per_turn(self) -> int:
        """Positions of a micro-turn that holds the VIDEO block (every micro-turn when `uniform`)."""
        return sum(b.size for b in self.blocks)

    @property
    def uniform(self) -> bool:
        """Every micro-turn has the same positions (no video, or video in every micro-turn)."""
        return self.video_every == 1 or self.video_patches == 0

    @property
    def video_channels(self) -> int:
        """Channels of a packed patch: RGB, plus the RGB change with `video_delta`."""
        return 6 if self.video_delta else 3

    def has_video(self, turn: int) -> bool:
        """Whether micro-turn `turn` (from the start of the session or window) holds the VIDEO block."""
        return self.video_patches > 0 and turn % self.video_every == 0

    def video_turns(self, num_turns: int) -> int:
        """Micro-turns of a `num_turns` window that hold the VIDEO block."""
        return -(-num_turns // self.video_every) if self.video_patches else num_turns

    @property
    def mean_positions_per_turn(self) -> float:
        """Positions per micro-turn averaged over a video period (`positions_per_turn` when `uniform`)."""
        return self.seq_len(self.video_every) / self.video_every

    def turn_offsets(self, num_turns: int) -> np.ndarray:
        """Sequence index of each micro-turn's first position, [num_turns + 1] (the last: the length)."""
        sizes = np.full(num_turns, self.positions_per_turn, np.int64)
        if not self.uniform:
            sizes[np.arange(num_turns) % self.video_every != 0] -= self.video_patches
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)

    def require_uniform(self, what: str) -> None:
        """A clear error where code needs every micro-turn to have the same positions."""
        if not self.uniform:
            raise ValueError(f"{what} needs the same positions in every micro-turn; got layout.video_every="
                             f"{self.video_every} with video on (expected layout.video_every=1 or no video)")

    @property
    def input_size(self) -> int:
        """Positions of the input block (prefilled each micro-turn)."""
        return sum(b.size for b in self.blocks if b.direction == "in")

    @property
    def output_size(self) -> int:
        """Positions of the output block (decoded each micro-turn, after the input block)."""
        return sum(b.size for b in self.blocks if b.direction == "out")

    def block_slice(self, kind: Kind) -> slice:
        """Slice of `kind`'s positions inside one micro-turn (empty if the kind is disabled)."""
        start = 0
        for b in self.blocks:
            if b.kind == kind:
                return slice(start, start + b.size)
            start += b.size
        return slice(start, start)

    def turn_kinds(self) -> np.ndarray:
        """Kind id of each position of one micro-turn, shape [positions_per_turn]."""
        return np.concatenate([np.full(b.size, int(b.kind), np.int32) for b in self.blocks])

    def seq_len(self, num_turns: int) -> int:
        if self.uniform:
            return num_turns * self.positions_per_turn
        return int(self.turn_offsets(num_turns)[-1])

    def kind_indices(self, kind: Kind, num_turns: int) -> np.ndarray:
        """Sequence indices of every `kind` position in a `num_turns` window, shape [num_turns, size]
        ([video_turns(num_turns), size] for VIDEO)."""
        s = self.block_slice(kind)
        within = np.arange(s.start, s.stop, dtype=np.int32)[None, :]
        if self.uniform:
            base = np.arange(num_turns, dtype=np.int32)[:, None] * self.positions_per_turn
            return base + within
        turns = np.arange(num_turns)
        starts = self.turn_offsets(num_turns)[:-1].astype(np.int32)
        if kind == Kind.VIDEO:
            return starts[turns % self.video_every == 0][:, None] + within
        # VIDEO is the first block: a micro-turn without it has every other block V positions earlier
        shift = np.where(turns % self.video_every == 0, 0, self.video_patches).astype(np.int32)
        return (starts - shift)[:, None] + within

    def window_kinds(self, num_turns: int) -> np.ndarray:
        """Kind id of every position of a `num_turns` window, [seq_len(num_turns)]."""
        kinds = self.turn_kinds()
        if self.uniform:
            return np.tile(kinds, num_turns)
        rest = kinds[self.block_slice(Kind.VIDEO).stop :]
        return np.concatenate([kinds if self.has_video(t) else rest for t in range(num_turns)]).astype(np.int32)

    # ---- time mapping ------------------------------------------------------------------------
    def input_turn(self, t_seconds: float) -> int:
        """Micro-turn whose input block holds an input event at `t_seconds`."""
        return int(np.floor(t_seconds / self.micro_turn_s + 1e-9))

    def output_turn(self, t_seconds: float) -> int:
        """Micro-turn whose output block produces model output starting at `t_seconds`.

        Output of micro-turn t plays in [(t+1)T, (t+2)T), so this is input_turn(t) - 1
        (clamped to 0: output cannot start before the first micro-turn has been heard).
        """
        return max(0, self.input_turn(t_seconds) - 1)

    def output_window(self, turn: int) -> tuple[float, float]:
        """Time span [start, end) in seconds during which micro-turn `turn`'s output plays."""
        return ((turn + 1) * self.micro_turn_s, (turn + 2) * self.micro_turn_s)

    def num_turns(self, duration_s: float) -> int:
        """Micro-turns needed to cover `duration_s` of input."""
        return int(np.ceil(duration_s / self.micro_turn_s - 1e-9))

    # ---- the packed-window contract -------------------------------------------------------
    def packed_spec(self, num_turns: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shapes/dtypes of one packed window (a batch adds a leading axis). See `pack.py`."""
        L = self.seq_len(num_turns)
        F, M = self.frames_per_audio_position, self.n_mels
        V, ps = self.video_patches, self.patch_size
        W = self.video_turns(num_turns)
        return {
            "token_ids": ((L,), np.int32),  # text id fed at text positions, PAD elsewhere
            "dmel": ((L, F, M), np.uint8),  # dMel codes fed at audio positions, 0 elsewhere
            "patches": ((W, V, ps, ps, self.video_channels), np.uint8),  # per micro-turn holding VIDEO
            "video_present": ((W,), np.bool_),  # a frame arrived in this micro-turn (its k micro-turns)
            "kinds": ((L,), np.int32),
            "positions": ((L,), np.int32),  # 0..L-1 within the window: position is time
            "micro_turn": ((L,), np.int32),  # absolute micro-turn index in the episode
            "valid": ((L,), np.bool_),  # inside the episode (False on end padding)
            "text_targets": ((L,), np.int32),  # next model-text token at MODEL_TEXT positions
            "text_loss_mask": ((L,), np.float32),
            "mel_targets": ((L, F, M), np.float32),  # log-mel frames at MODEL_AUDIO positions
            "audio_loss_mask": ((L,), np.float32),
            # the user's spoken words as text at USER_AUDIO positions (auxiliary target, see
            # text_streams.user_speech_tokens); NOTHING where no word has just ended
            "user_speech_targets": ((L,), np.int32),
        }
