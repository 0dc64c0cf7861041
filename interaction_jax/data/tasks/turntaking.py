"""Turn-taking: the user asks a question, the model answers after a natural gap (`GAP_S`).

The gap is drawn from 0.2-0.4 s: between turns people answer after about 200 ms (the mode of
the gaps in Stivers et al. 2009, "Universals and cultural variation in turn-taking", PNAS),
and one 200 ms micro-turn is the layout's floor.

Episodes hold as many question/answer exchanges (from a small bank) as fit, separated by a
pause. The answer follows the end of the question (or, for typed questions, the moment it is
read). Grading: `speak` in [question_end, question_end + 1.5) with expected = the answer's
key word, and `silent` while the user is asking (no barging in).
"""

from __future__ import annotations

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import EpisodeBuilder

# (question, spoken answer, key word expected in the answer)
QA_BANK = (
    ("What color is the sky?", "The sky is blue.", "blue"),
    ("How many legs does a spider have?", "A spider has eight legs.", "eight"),
    ("What is the capital of France?", "The capital of France is Paris.", "Paris"),
    ("What do bees make?", "Bees make honey.", "honey"),
    ("How many days are in a week?", "There are seven days in a week.", "seven"),
    ("What is frozen water called?", "Frozen water is called ice.", "ice"),
    ("Which animal says moo?", "A cow says moo.", "cow"),
    ("What is two plus two?", "Two plus two is four.", "four"),
    ("What season comes after winter?", "Spring comes after winter.", "Spring"),
    ("What do you use to write on paper?", "You can use a pen.", "pen"),
    ("What is the opposite of hot?", "The opposite of hot is cold.", "cold"),
    ("Where does the sun rise?", "The sun rises in the east.", "east"),
)
LATE_S = 1.5
GAP_S = (0.2, 0.4)  # response gap after the question ends (see the module docstring)


def generate(seed: int, *, duration_s: float, renderer: SpeechRenderer, instruction_mode: str = "mixed") -> Episode:
    b = EpisodeBuilder("turntaking", seed, duration_s, renderer, instruction_mode)
    rng = b.rng
    order = rng.permutation(len(QA_BANK))
    t = float(rng.uniform(0.3, 1.0))
    question_ends: list[float] = []
    for qi in order:
        question, answer, key = QA_BANK[int(qi)]
        # Keep exchanges that fit: question + gap + answer before the end.
        q_len = b.render(question, b.user_voice).speech_end
        a_len = b.render(answer, b.model_voice).speech_end
        if t + (0.0 if b.typed else q_len) + 0.8 + a_len > b.duration and question_ends:
            break
        q_end = b.instruct(question, t)
        if not b.typed:
            b.window("silent", t, q_end)
        say_at = q_end + b.gap(*GAP_S)
        said = b.model_says(answer, say_at)
        b.window("speak", q_end, q_end + LATE_S, key)
        question_ends.append(q_end)
        t = (said[-1].end if said else say_at) + float(rng.uniform(0.6, 1.5))
        if t >= b.duration:
            break
    b.metadata.update(question_end=question_ends[0], question_ends=question_ends)
    b.metadata["instruction_end"] = question_ends[0]
    return b.finish()
