"""Benchmark episode sets and the episode -> live-chunk conversion.

Benchmark seeds start at `EVAL_SEED_BASE` (2,000,000), far from the training seeds
(`data.seed` = 0 upwards) and the held-out-loss seeds (`data.eval_seed` = 1,000,003 upwards),
and each task has its own range, so a benchmark never grades an episode the model trained on.
"""

from __future__ import annotations

import time

import numpy as np

from interaction_jax.background.protocol import DONE, ERROR, DelegationEvent
from interaction_jax.data.episode import Episode
from interaction_jax.inference.session import Chunk
from interaction_jax.streams.layout import StreamLayout

EVAL_SEED_BASE = 2_000_000
TASK_SEED_OFFSET = {"timespeak": 0, "cuespeak": 100_000, "turntaking": 200_000, "interruption": 300_000,
                    "others": 400_000, "delegation": 500_000}
# The refusal tasks (data/tasks/refusal.py, eval/refusal.py).
TASK_SEED_OFFSET.update(refusal=600_000, refusal_benign=700_000, refusal_redteam=800_000)
# The visual-proactivity tasks (eval/visual.py) sit far above the others, leaving room for new tasks in between.
TASK_SEED_OFFSET.update(visual_cue=1_200_000, repcount=1_300_000, visual_qa=1_400_000, visual_negative=1_500_000)
# Two disjoint ranges per task: "test" (the reported numbers) and "validation" (where decoding
# settings are chosen), so nothing is tuned on the episodes it is reported on.
SPLIT_OFFSET = {"test": 0, "validation": 50_000}
INSTRUCTION_MODES = ("mixed", "typed", "spoken")
SCENES = ("default", "clean")  # how the visual tasks' frames are rendered (data/tasks/visual_scene.py)


def eval_seed(task: str, index: int, split: str = "test") -> int:
    """Seed of the `index`-th benchmark episode of `task` (disjoint from training seeds and across splits)."""
    if task not in TASK_SEED_OFFSET:
        raise ValueError(f"eval: no benchmark seed range for task {task!r}; known: {sorted(TASK_SEED_OFFSET)}")
    if split not in SPLIT_OFFSET:
        raise ValueError(f"eval: split must be one of {sorted(SPLIT_OFFSET)}, got {split!r}")
    if not 0 <= int(index) < 50_000:
        raise ValueError(f"eval: benchmark episode index must be in [0, 50000), got {index}")
    return EVAL_SEED_BASE + TASK_SEED_OFFSET[task] + SPLIT_OFFSET[split] + int(index)


def benchmark_episodes(task: str, num: int, duration_s: float, *, log: bool = True, split: str = "test",
                       instruction_mode: str = "mixed", scene: str = "default") -> list[Episode]:
    """`num` held-out episodes of `task` rendered with espeak-ng (deterministic per seed).

    `instruction_mode` "typed" / "spoken" gives every instruction that way (the task's curriculum
    variant, same seeds: the same episode content with the instruction typed or spoken); tasks
    without instructions ignore it. `scene="clean"` renders the visual tasks' `_clean` variants
    (same seeds and content, still camera, no noise); other tasks ignore it.
    """
    from interaction_jax.data import tasks

    if instruction_mode not in INSTRUCTION_MODES:
        raise ValueError(f"eval: instruction_mode must be one of {INSTRUCTION_MODES}, got {instruction_mode!r}")
    if scene not in SCENES:
        raise ValueError(f"eval: scene must be one of {SCENES}, got {scene!r}")
    base = f"{task}_clean" if scene == "clean" and f"{task}_clean" in tasks.TASKS else task
    name = base if instruction_mode == "mixed" or base not in tasks.INSTRUCTED_TASKS else f"{base}_{instruction_mode}"
    t0 = time.perf_counter()
    out = [tasks.generate(name, eval_seed(task, i, split), duration_s=duration_s) for i in range(int(num))]
    if log:
        print(f"[eval] rendered {num} {name} episodes of {duration_s:.0f} s ({split} seeds) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out


def episode_chunks(episode: Episode, layout: StreamLayout, *, scripted_background: bool = True) -> list[Chunk]:
    """One `Chunk` per micro-turn, holding exactly what a live client would send in it.

    Audio is the user channel's samples of the micro-turn; the user's words (as `transcript`, in the
    micro-turn where each ends: a stand-in for an ASR feeding delegation context), typed messages,
    video frames and
    (with `scripted_background`) background results/errors go to the micro-turn in which they
    arrive (`layout.input_turn`), as in training packing. Delegation *requests* are the model's
    own output and never an input.
    """
    sr = episode.sample_rate
    S = int(round(layout.micro_turn_s * sr))
    n = layout.num_turns(episode.duration)
    audio = np.pad(episode.user_audio, (0, max(0, n * S - episode.user_audio.size)))
    chunks = [Chunk(audio=audio[t * S : (t + 1) * S], sample_rate=sr) for t in range(n)]

    def at(t_s: float) -> Chunk:
        return chunks[min(n - 1, layout.input_turn(t_s))]

    for w in episode.user_words:  # what an ASR would have heard by the end of the word (context packages)
        c = at(w.end)
        c.transcript = (*c.transcript, w)
    for ev in sorted(episode.user_text, key=lambda e: e.time):
        c = at(ev.time)
        c.text = [*(c.text or []), ev.text]
    for frame in sorted(episode.video, key=lambda f: f.time):
        at(frame.time).video = frame.image  # the last frame of the micro-turn wins, as in packing
    if scripted_background:
        for ev in episode.background:
            if ev.kind in ("result", "error"):
                c = at(ev.time)
                kind = DONE if ev.kind == "result" else ERROR
                c.background = [*c.background, DelegationEvent(kind, ev.job_id, episode.episode_id, ev.time, ev.text)]
    return chunks


