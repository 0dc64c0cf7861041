"""delegation_typed: a small model trained only on the delegation task, questions typed.

The "show it works" model of the background-model issue: does a model trained on the
delegation data (with no special casing in the trainer) hand off the right request, keep the
conversation going while the job runs, and speak the result after it arrives?

Why these choices:
* Typed questions (task "delegation_typed"): the request must be copied into the text stream
  (`DELEGATE what is 4676 plus 2179 DELEGATE_END`). From typed text that is a copy over a few
  micro-turns; from speech it needs a speech recogniser first, which a model of this size and
  training budget does not learn (see experiments/interaction_small). Spoken questions are the
  next step of the curriculum.
* Whole 10 s episodes as training windows (window = episode, 50 micro-turns): a live session
  starts at position 0, and so does every training window (no train/serve mismatch), and the
  question, the request, the result's arrival and the spoken answer are all in one window.
* Width 128, 4 layers, 4 heads of 32 (2 KV heads): enough heads for copy (induction) circuits;
  small enough for a CPU budget of about an hour. Video off (the task does not use it).
* `train.self_audio_dropout=0.5`: without it the served model, hearing its own generated
  voice, copied 23% of requests exactly (98% when it heard the target speech instead).

    python -m interaction_jax.data.prepare --task=delegation_typed --num_episodes=1000 --seed=0 \
        --episode_seconds=10 --out=runs/delegation/data/train
    python -m interaction_jax.train --config=experiments/delegation/config.py --workdir=runs/delegation/run4
    python experiments/delegation/run.py --config=experiments/delegation/config.py \
        --workdir=runs/delegation/run4 --task=delegation_typed --num_examples=64
"""

from interaction_jax.config_lib import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.layout.video_patches = 0
    c.data.task = "delegation_typed"
    c.data.data_dir = "runs/delegation/data/train"
    c.data.num_episodes = 1000
    c.data.eval_num_episodes = 16
    c.data.episode_seconds = 10.0
    c.data.window_micro_turns = 50  # the whole episode
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
    c.train.num_steps = 1800
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 0.05
    c.train.log_every = 25
    c.train.eval_every = 600
    c.train.checkpoint_every = 200
    c.inference.slots = 16
    # Half of the training windows mute the model's own audio inputs (train/augment.py), so its
    # text does not lean on hearing itself: served, it hears its own *generated* voice (the
    # default inference.self_audio) and still copies requests and results (README: diagnosis).
    c.train.self_audio_dropout = 0.5
    c.inference.temperature = 0.3  # picked among 0.7 / 0.3 / greedy on seeds 3,000,000..; reported on 3,100,000..
    return c
