"""Task curricula: the task weights the training windows are drawn with change at given steps.

    c.data.curriculum = "0:timespeak_typed=3,cuespeak_typed=3,turntaking=2;2000:cuespeak_typed=1,delegation_typed=1"

Phases are `STEP:task=weight,...` separated by `;`, the first at step 0, steps increasing (steps
count micro-batches, like `train.num_steps`). From each phase's first step on, every training
element comes from that phase's tasks in proportion to its weights; a task not named in a phase
is not drawn in it. `STEP:all` is every episode as prepared, in exactly the order the pipeline
reads without a curriculum, so `"0:all;2000:..."` trains bitwise like the plain run to step 2000
(a branch can resume from that run's step-2000 checkpoint). The episodes are the prepared
data's own (`data.data_dir` or the synthetic source): the curriculum re-weights which of them
are read, so the data must hold every task a phase names, and the task of each episode must be
known without reading it (a synthetic store's manifest or a `SyntheticSource`: episode i of task
spec T with seed s is `mix_task(s + i, T)`).

Why a schedule of weights and not a second data set: a phase is a pure function of the element
index, so the iterator's state stays one integer, a resumed run reads exactly the batches it
would have read, and no data is prepared twice. Within a phase the tasks interleave in a fixed
weighted pattern (`grain.MapDataset.mix`) and each task's episodes are reshuffled every epoch.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import grain
import numpy as np

from interaction_jax.errors import UserError

ALL = "all"  # a phase of every episode as prepared, in the plain pipeline's epoch shuffle


class CurriculumError(UserError, ValueError):
    """A malformed curriculum, or one the data cannot serve."""


@dataclasses.dataclass(frozen=True)
class Phase:
    start_step: int
    tasks: tuple[str, ...]
    weights: tuple[float, ...]  # normalised


def parse_curriculum(spec: str) -> list[Phase]:
    """The phases of a `data.curriculum` string (module docstring); [] for an empty one."""
    from interaction_jax.data.tasks import TaskError, parse_mix

    spec = (spec or "").strip()
    if not spec:
        return []
    phases: list[Phase] = []
    for part in spec.split(";"):
        step_s, sep, mix = part.strip().partition(":")
        if not sep or not mix.strip():
            raise CurriculumError(f"data.curriculum: phase {part.strip()!r} must be 'STEP:task=weight,...'")
        try:
            step = int(step_s)
        except ValueError:
            raise CurriculumError(f"data.curriculum: phase {part.strip()!r}: step {step_s!r} is not an integer") \
                from None
        if phases and step <= phases[-1].start_step:
            raise CurriculumError(f"data.curriculum: phase steps must increase; {step} follows {phases[-1].start_step}")
        if not phases and step != 0:
            raise CurriculumError(f"data.curriculum: the first phase must start at step 0, got {step}")
        if mix.strip() == ALL:
            phases.append(Phase(step, (ALL,), (1.0,)))
            continue
        try:
            names, p = parse_mix("mix:" + mix.strip())
        except TaskError as e:
            raise CurriculumError(f"data.curriculum: phase at step {step}: {e}") from None
        phases.append(Phase(step, tuple(names), tuple(float(x) for x in p)))
    return phases


def episode_tasks(source: Any) -> list[str] | None:
    """The task of every episode of `source` without reading them, or None when it is not known
    (a corpus store). Looks through the pipeline's wrappers (`.source`); a custom source can say
    by defining `episode_tasks() -> list[str]`."""
    from interaction_jax.data import tasks
    from interaction_jax.data.sources import SyntheticSource
    from interaction_jax.data.store import EpisodeStore

    while not isinstance(source, (EpisodeStore, SyntheticSource)) and not hasattr(source, "episode_tasks") \
            and hasattr(source, "source"):
        source = source.source
    if hasattr(source, "episode_tasks"):  # any other source that knows its tasks
        return list(source.episode_tasks())
    if isinstance(source, SyntheticSource):
        task, seed = source.task, source.seed
    elif isinstance(source, EpisodeStore):
        meta = source.metadata
        if meta.get("source") != "synthetic" or "task" not in meta or "seed" not in meta:
            return None
        task, seed = str(meta["task"]), int(meta["seed"])
    else:
        return None
    n = len(source)
    if not tasks.is_mix(task):
        return [task] * n
    return [tasks.mix_task(seed + i, task) for i in range(n)]


class _Subset:
    """Random access to the given indices of a random-access dataset."""

    def __init__(self, parent, indices: np.ndarray):
        self.parent, self.indices = parent, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.parent[int(self.indices[i])]


class _Phased(grain.MapDataset):
    """Element i from the phase whose first element is the last one <= i (its own index restarts at 0)."""

    def __init__(self, phases: list[grain.MapDataset], starts: list[int]):
        super().__init__(phases)
        self._starts = np.asarray(starts, np.int64)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        p = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._parents[p][int(index - self._starts[p])]

    def __str__(self) -> str:
        return f"CurriculumPhases(starts={self._starts.tolist()})"


def curriculum_dataset(ds: grain.MapDataset, tasks_of: list[str], phases: list[Phase], *, seed: int,
                       elements_per_step: int, where: str = "the training data") -> grain.MapDataset:
    """`ds` (random access to episodes whose tasks are `tasks_of`) as an endless dataset that
    follows `phases`; phase k starts at element `phases[k].start_step * elements_per_step`."""
    if len(tasks_of) != len(ds):
        raise ValueError(f"{len(tasks_of)} task names for {len(ds)} episodes")
    by_task: dict[str, np.ndarray] = {}
    for i, t in enumerate(tasks_of):
        by_task.setdefault(t, []).append(i)
    by_task = {t: np.asarray(ix, np.int64) for t, ix in by_task.items()}
    built = []
    for k, ph in enumerate(phases):
        if ph.tasks == (ALL,):  # exactly the plain pipeline's order (same seed): no curriculum in it
            built.append(ds.shuffle(seed=seed).repeat())
            continue
        missing = [t for t in ph.tasks if t not in by_task]
        if missing:
            held = ", ".join(f"{t} ({len(ix)})" for t, ix in sorted(by_task.items()))
            raise CurriculumError(f"data.curriculum: the phase at step {ph.start_step} draws {missing}, but "
                                  f"{where} holds no episode of {'it' if len(missing) == 1 else 'them'}; "
                                  f"it holds: {held}")
        parts = [grain.MapDataset.source(_Subset(ds, by_task[t])).shuffle(seed=seed + 104729 * (k + 1) + j).repeat()
                 for j, t in enumerate(ph.tasks)]
        built.append(parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, list(ph.weights)))
    return _Phased(built, [ph.start_step * elements_per_step for ph in phases])
