"""Talking to others / background speech: speech not meant for the model; it stays silent.

Episodes chain seeded segments until the time is used up:
  * `side_talk`: another person (OTHER voice) talks to the user, who answers them;
  * `address_other`: the user addresses someone by name ("Alex, can you pass the salt?"),
    who may answer;
  * `background`: background speech (a TV, people nearby) at low gain.
There is no instruction (`metadata["instruction_mode"] = "none"`), no model speech, and a
`silent` window covers each segment plus 1 s after it.
"""

from __future__ import annotations

from interaction_jax.data.episode import Episode
from interaction_jax.data.speech import SpeechRenderer
from interaction_jax.data.tasks.common import BACKGROUND_GAIN, EpisodeBuilder

NAMES = ("Alex", "Sam", "Maria", "Tom", "Nina", "Chris")
SIDE_TALK = (
    ("Hey, did you feed the cat?", "Yes, I did it this morning."),
    ("Are you coming to dinner?", "Give me five minutes."),
    ("Where did you put the keys?", "They are on the kitchen table."),
    ("Do you want some coffee?", "No thanks, I am fine."),
)
TO_OTHER = (
    ("can you pass the salt?", "Sure, here you go."),
    ("could you close the door please?", "Okay."),
    ("what time is the movie tonight?", "It starts at eight."),
    ("did you call your mother?", "Not yet, I will later."),
)
BACKGROUND = (
    "And now the weather for the weekend, with sunshine in the north.",
    "The team scored twice in the second half to win the game.",
    "Prices at the market went up again this week.",
    "Scientists say the new bridge will open next spring.",
)
SILENT_TAIL_S = 1.0


def generate(seed: int, *, duration_s: float, renderer: SpeechRenderer) -> Episode:
    b = EpisodeBuilder("others", seed, duration_s, renderer)
    rng = b.rng
    b.metadata["instruction_mode"] = "none"
    t = float(rng.uniform(0.2, 1.0))
    segments: list[str] = []
    while t < b.duration - 1.0:
        kind = ("side_talk", "address_other", "background")[int(rng.integers(3))]
        start = t
        if kind == "side_talk":
            said, reply = SIDE_TALK[int(rng.integers(len(SIDE_TALK)))]
            words = b.other_says(said, t)
            words = b.user_says(reply, words[-1].end + float(rng.uniform(0.2, 0.6))) if words else words
        elif kind == "address_other":
            line, reply = TO_OTHER[int(rng.integers(len(TO_OTHER)))]
            words = b.user_says(f"{rng.choice(NAMES)}, {line}", t)
            if words and rng.random() < 0.6:
                words = b.other_says(reply, words[-1].end + float(rng.uniform(0.2, 0.6))) or words
        else:
            words = b.other_says(str(rng.choice(BACKGROUND)), t, gain=BACKGROUND_GAIN)
        end = words[-1].end if words else t
        b.window("silent", start, end + SILENT_TAIL_S)
        segments.append(kind)
        t = end + float(rng.uniform(0.4, 1.5))
    b.metadata["segments"] = segments
    return b.finish()
