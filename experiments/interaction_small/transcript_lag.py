"""How late is the transcript of a heard word? CueSpeak's running word stream, on the recipe's grid.

    python experiments/interaction_small/transcript_lag.py [--num_episodes=40]

With `model.user_speech_loss_weight` the model writes the text of each user word at its USER_AUDIO
positions, one byte per position (4 per 200 ms micro-turn), from the micro-turn the word ends in
(`model.user_speech_timing=at_end`); bytes that do not fit carry forward. In a stream of words
spoken back to back the bytes arrive nearly as fast as they can be written, so the transcript
falls behind. This measures, on the training targets themselves (no model), the time from each
streamed word's end to the end of the micro-turn holding its last byte, for the CueSpeak cue
responses' timing (0.25-0.45 s after the cue in `cuespeak`, 0.5-0.7 s in `cuespeak_late`).
Writes `transcript_lag.json` beside this file and prints the summary.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_integer("num_episodes", 40, "CueSpeak episodes (seeds 0..N-1).", lower_bound=1)
    flags.DEFINE_string("out", os.path.join(HERE, "transcript_lag.json"), "Output JSON.")


def word_lags(episode, config) -> list[float]:
    """Seconds from each streamed user word's end to the end of the micro-turn holding its last transcript byte."""
    from interaction_jax.data.pipeline import ToGrid
    from interaction_jax.streams.layout import Kind, StreamLayout
    from interaction_jax.streams.pack import pack_window
    from interaction_jax.streams.tokenizer import make_tokenizer

    layout = StreamLayout.from_config(config)
    turn_s = layout.micro_turn_ms / 1000.0
    grid = ToGrid.from_config(config, layout).map(episode)
    w = pack_window(grid, 0, grid.num_turns)
    tok = make_tokenizer(config.text)
    space = tok.encode(" ")[-1]
    written = (w["kinds"] == Kind.USER_AUDIO) & (w["user_speech_targets"] > 1)  # word bytes, not NOTHING/PAD
    tokens, turns = w["user_speech_targets"][written], w["micro_turn"][written]
    last_byte_turn = turns[np.flatnonzero(tokens[1:] == space)]  # the byte before each space ends a word
    lags = []
    for j, word in enumerate(episode.user_words):
        if j < len(last_byte_turn) and word.start >= episode.metadata["stream_start"] - 1e-6:
            lags.append(float((last_byte_turn[j] + 1) * turn_s - word.end))
    return lags


def main(argv) -> None:
    del argv
    from interaction_jax.config_lib import load_config
    from interaction_jax.data.tasks import generate

    config = load_config(os.path.join(HERE, "config.py"), ["model.user_speech_timing=at_end"])
    lags = []
    for seed in range(FLAGS.num_episodes):
        lags += word_lags(generate("cuespeak_typed", seed, duration_s=float(config.data.episode_seconds)), config)
    a = np.asarray(lags)
    summary = {
        "words": int(a.size), "episodes": FLAGS.num_episodes,
        "lag_median_s": round(float(np.median(a)), 3), "lag_p90_s": round(float(np.percentile(a, 90)), 3),
        "lag_max_s": round(float(a.max()), 3),
        "share_after_0.35_s": round(float((a > 0.35).mean()), 3),  # the middle of the default response gap
        "share_after_0.45_s": round(float((a > 0.45).mean()), 3),  # the latest default response start
        "share_after_0.7_s": round(float((a > 0.7).mean()), 3),  # the latest cuespeak_late response start
    }
    out = {"what": "seconds from a streamed CueSpeak user word's end to the end of the micro-turn holding the last "
                   "byte of its transcript target (model.user_speech_timing=at_end, the recipe's layout)",
           "command": "python experiments/interaction_small/transcript_lag.py"
                      + (f" --num_episodes={FLAGS.num_episodes}" if FLAGS.num_episodes != 40 else ""),
           "summary": summary}
    with open(FLAGS.out + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(FLAGS.out + ".tmp", FLAGS.out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    _define_flags()
    app.run(main)
