"""Interaction benchmarks: run a model through the streaming engine on held-out episodes, grade its streams.

`episodes` (benchmark episode sets from seeds disjoint from training, episode -> 200 ms chunks),
`runner` (episodes -> `EpisodeRun`s through `Scheduler` sessions, never a teacher-forced
shortcut), `grading` (the task's grading windows checked on the model's time-stamped text
stream), `benchmarks` (TimeSpeak, CueSpeak, FD-style interactivity, turn-taking metrics),
`plots` (timelines of graded examples), `baseline` (the turn-based VAD cascade with oracle
content), `fdb` (Full-Duplex-Bench input/output folders). `python -m interaction_jax.evaluate`
is the command.
"""
