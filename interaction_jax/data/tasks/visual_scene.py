"""Frames for the visual-proactivity tasks: a seeded scene of sprites drawn with numpy, one frame per 200 ms.

Why a scene and not single pictures: the model sees one frame per micro-turn (the layout's video
rate; `streams/pack.py` puts the last frame of a micro-turn into its input block), so a visual
event is a change *between* frames, and the tasks grade the time of that change. Everything that
is not the event must change too, so that "something changed" is never the answer:

  * a background with a seeded gradient and static clutter (muted, low-saturation boxes and
    blobs whose colours are far from the `PALETTE` the tasks ask about),
  * camera jitter (a random walk of the crop window, at most `JITTER` px from the centre) and a
    small per-frame brightness flicker,
  * pixel noise (`NOISE_STD`) on every frame.

`Scene(..., clean=True)` keeps the same content (every seeded draw is made as before, so an
episode's events, timing and words do not change) but with a still camera, no flicker and no
noise: the tasks' `<task>_clean` variants, for probing whether the nuisance changes or the
event itself is what a model fails to read.

Sprites are drawn in *world* coordinates on a canvas `JITTER` px larger on every side than the
frame; the camera crops `FRAME_SIZE` px from it. `Scene.render` returns the frames and, per
sprite, its visible pixel count in every frame (from its mask, before noise), so a task can
define an event ("the square has left the screen") by what the camera actually shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from interaction_jax.data.episode import VideoFrame

FRAME_S = 0.2  # one frame per micro-turn of the default layout (200 ms)
FRAME_SIZE = 80  # square frames; packing resizes them to layout.video_frame_size
JITTER = 2  # camera shake, px
NOISE_STD = 5.0
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 185, 60),
    "blue": (45, 85, 230),
    "yellow": (235, 205, 35),
    "purple": (150, 60, 205),
    "white": (240, 240, 240),
}
COLOURS = tuple(PALETTE)
SHAPES = ("square", "circle", "triangle")
SKIN = (200, 150, 120)  # the arm that holds objects up (not a palette colour)
HOUSING = (28, 28, 30)  # the traffic light's box
LAMP_OFF = (70, 70, 70)


def num_frames(duration_s: float) -> int:
    """Frames of an episode: one at every multiple of FRAME_S in [0, duration)."""
    return int(np.ceil(duration_s / FRAME_S - 1e-9))


def frame_time(k: int) -> float:
    return round(k * FRAME_S, 6)


def shape_mask(shape: str, cx: float, cy: float, size: float, h: int, w: int) -> np.ndarray:
    """[h, w] bool mask of `shape` centred at (cx, cy) with side / diameter `size` (canvas px)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = size / 2.0
    if shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "triangle":  # apex up: half-width grows from 0 at the top to r at the bottom
        top = cy - r
        return (ys >= top) & (ys <= cy + r) & (np.abs(xs - cx) <= (ys - top) / 2.0)
    if shape == "bar":  # a horizontal rectangle (a barbell), size wide and size/4 tall
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= max(1.5, r / 4))
    raise ValueError(f"visual: unknown shape {shape!r}")


@dataclasses.dataclass
class Sprite:
    """One object: per frame its centre (NaN = not shown) and colour; `shape` and `size` fixed.

    `colour` is one RGB triple or a per-frame list of them (a traffic light's lamp).
    """

    name: str
    shape: str
    size: float
    xy: np.ndarray  # [n_frames, 2] world coordinates of the centre (NaN rows: hidden)
    colour: tuple | list
    arm: bool = False  # drawn held up by an arm from the bottom edge

    def colour_at(self, k: int) -> tuple:
        c = self.colour
        return tuple(c[k]) if isinstance(c, list) else tuple(c)


def jitter_colour(rng: np.random.Generator, rgb: tuple, amount: int = 12) -> tuple:
    """A palette colour with a seeded per-episode offset (lighting differs between episodes)."""
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)


class Scene:
    """Background, clutter, camera and sprites of one episode; `render()` draws every frame."""

    def __init__(self, rng: np.random.Generator, duration_s: float, size: int = FRAME_SIZE, *, clean: bool = False):
        self.rng, self.size, self.n = rng, int(size), num_frames(duration_s)
        self.clean = bool(clean)
        c = self.size + 2 * JITTER
        self.canvas_size = c
        base = rng.integers(50, 140)
        tint = rng.integers(-20, 21, 3)
        g = np.linspace(-1.0, 1.0, c, dtype=np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * g[None, :] + np.sin(angle) * g[:, None]
        bg = base + tint[None, None, :] + 18.0 * ramp[..., None]
        for _ in range(int(rng.integers(3, 7))):  # static clutter: muted boxes and blobs
            grey = float(rng.integers(60, 151))
            col = grey + rng.integers(-20, 21, 3)
            shape = ("square", "circle")[int(rng.integers(2))]
            m = shape_mask(shape, rng.uniform(0, c), rng.uniform(0, c), rng.uniform(6, 22), c, c)
            bg[m] = col
        self.background = np.clip(bg, 0, 255).astype(np.float32)
        steps = rng.integers(-1, 2, (self.n, 2))
        self.offsets = np.clip(np.cumsum(steps, axis=0), -JITTER, JITTER).astype(int)  # camera random walk
        self.gain = rng.uniform(0.96, 1.04, self.n).astype(np.float32)
        if self.clean:  # the same draws, then a still camera without flicker (module docstring)
            self.offsets[:] = 0
            self.gain[:] = 1.0
        self.sprites: list[Sprite] = []
        self.extra: list[Callable[[int, np.ndarray], None]] = []

    def track(self, fill: float = np.nan) -> np.ndarray:
        """An empty [n_frames, 2] position track (NaN = hidden)."""
        return np.full((self.n, 2), fill, np.float64)

    def add(self, sprite: Sprite) -> Sprite:
        if sprite.xy.shape != (self.n, 2):
            raise ValueError(f"visual: sprite {sprite.name!r} track must be [{self.n}, 2], got {sprite.xy.shape}")
        self.sprites.append(sprite)
        return sprite

    def world(self, x: float, y: float) -> tuple[float, float]:
        """Canvas coordinates of frame coordinates (x, y) seen by an unshaken camera."""
        return x + JITTER, y + JITTER

    def render(self, noise_rng: np.random.Generator | None = None) -> tuple[list[VideoFrame], dict[str, np.ndarray]]:
        """(frames at k * FRAME_S, {sprite name: [n_frames] visible pixel count}), pixels uint8 RGB."""
        rng = noise_rng if noise_rng is not None else self.rng
        c, s = self.canvas_size, self.size
        frames, visible = [], {sp.name: np.zeros(self.n, np.int64) for sp in self.sprites}
        for k in range(self.n):
            img = self.background.copy()
            oy, ox = JITTER + self.offsets[k, 0], JITTER + self.offsets[k, 1]
            for sp in self.sprites:
                x, y = sp.xy[k]
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                if sp.arm:
                    arm = np.zeros((c, c), bool)
                    half = max(2, int(sp.size / 5))
                    arm[int(max(0, y)) :, int(max(0, x - half)) : int(max(0, x + half))] = True
                    img[arm] = SKIN
                m = shape_mask(sp.shape, x, y, sp.size, c, c)
                img[m] = sp.colour_at(k)
                visible[sp.name][k] = int(m[oy : oy + s, ox : ox + s].sum())
            for draw in self.extra:
                draw(k, img)
            crop = img[oy : oy + s, ox : ox + s] * self.gain[k]
            crop = crop + (0.0 if self.clean else 1.0) * rng.normal(0.0, NOISE_STD, crop.shape)  # drawn either way
            frames.append(VideoFrame(frame_time(k), np.clip(np.rint(crop), 0, 255).astype(np.uint8)))
        return frames, visible


def add_traffic_light(scene: Scene, lamp: list[tuple], x: float, y: float, radius: float) -> Sprite:
    """A lamp (per-frame colours) in a dark housing at frame position (x, y)."""
    cx, cy = scene.world(x, y)
    c = scene.canvas_size
    box = shape_mask("square", cx, cy, 2 * radius + 6, c, c)

    def housing(_k: int, img: np.ndarray) -> None:
        img[box & ~shape_mask("circle", cx, cy, 2 * radius, c, c)] = HOUSING

    scene.extra.append(housing)
    xy = scene.track()
    xy[:] = (cx, cy)
    return scene.add(Sprite("lamp", "circle", 2 * radius, xy, lamp))


def path(scene: Scene, waypoints: list[tuple[int, float, float]]) -> np.ndarray:
    """A track through (frame, x, y) waypoints (frame coordinates), linear in between, hidden outside."""
    xy = scene.track()
    ks = [k for k, _, _ in waypoints]
    if sorted(ks) != ks:
        raise ValueError(f"visual: waypoint frames must increase, got {ks}")
    frames = np.arange(scene.n)
    inside = (frames >= ks[0]) & (frames <= ks[-1])
    xs = np.interp(frames, ks, [x for _, x, _ in waypoints]) + JITTER
    ys = np.interp(frames, ks, [y for _, _, y in waypoints]) + JITTER
    xy[inside, 0], xy[inside, 1] = xs[inside], ys[inside]
    return xy


def first_frame(mask: np.ndarray, start: int = 0) -> int | None:
    """Index of the first True at or after `start`, or None."""
    idx = np.flatnonzero(np.asarray(mask)[start:])
    return int(start + idx[0]) if idx.size else None
