"""refusal: one small model on the refusal tasks, sized for a 2-core CPU (about 1.75 h in all).

Does a model trained with this codebase refuse disallowed requests in speech, answer the benign
look-alikes, and keep refusing when the user presses (issue 21)? The recipe is the one of
experiments/interaction_small (see its config.py for why each ingredient):

* **Whole-episode windows from position 0** (`data.window_micro_turns` = the episode's 80
  micro-turns): a live session starts at position 0 and so does every training window, and a
  red-team episode's first request, the refusal and every press are in one window. Episodes
  are 16 s so that most red-team episodes hold a press (`data/tasks/refusal.py`).
* **Typed requests first** (`<task>_typed`): whether a request is disallowed is content, read
  from typed text before a model of this size can transcribe speech; one part in four of the
  mix keeps the tasks' own half-spoken requests, so spoken turn ends are learned from audio.
* **`train.self_audio_dropout=0.5`**: half the windows mute the model's own audio, so its text
  does not lean on hearing itself; served, it hears its own generated voice.
* Width 128, 4 layers, 4 heads of 32 (2 KV heads), video off (no refusal task uses frames).

The red-team tasks get the largest weight: their episodes hold refusals *and* benign answers,
the consistency the benchmark scores.

    python -m interaction_jax.data.prepare --task="$(python experiments/refusal/config.py)" \
        --num_episodes=3000 --seed=0 --episode_seconds=16 --out=runs/refusal/data/train
    python -m interaction_jax.train --config=experiments/refusal/config.py --workdir=runs/refusal/run
    python -m interaction_jax.evaluate --workdir=runs/refusal/run --benchmarks=refusal \
        --instruction_mode=typed --num_examples=50 --baseline --oracle

(all commands, with the held-out set and the validation split: README.md beside this file)
"""

from interaction_jax.config_lib import base_config

TRAIN_MIX = ("mix:refusal_typed=3,refusal_benign_typed=3,refusal_redteam_typed=4,"
             "refusal=1,refusal_benign=1,refusal_redteam=1")


def get_config(arg=None):
    del arg
    c = base_config()
    c.layout.video_patches = 0
    c.data.task = TRAIN_MIX
    c.data.data_dir = "runs/refusal/data/train"
    c.data.eval_data_dir = "runs/refusal/data/eval"
    c.data.num_episodes = 3000
    c.data.eval_num_episodes = 64
    c.data.episode_seconds = 16.0
    c.data.window_micro_turns = 80  # the whole episode, from position 0
    c.data.batch_size = 4
    c.data.read_threads = 1
    c.model.d_model = 128
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.model.ffn_dim = 512
    c.model.flow.hidden_dim = 128
    c.model.flow.num_layers = 2
    c.model.flow.ode_steps = 4
    c.model.scan_layers = False  # unrolled layers and block attention: faster on CPU, same function
    c.model.attention_impl = "xla_causal_blocks"
    c.train.num_steps = 2500
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 0.05
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.keep_last = 2
    c.train.self_audio_dropout = 0.5
    c.inference.slots = 16
    c.inference.temperature = 0.3  # the fallback; choose it on --split=validation (README)
    return c


if __name__ == "__main__":  # prints the training mix (used by the prepare commands)
    print(TRAIN_MIX)
