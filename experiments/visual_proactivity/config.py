"""visual_proactivity: one small model that speaks when the picture changes, sized for a 2-core CPU.

    python -m interaction_jax.train --config=experiments/visual_proactivity/config.py \
        --workdir=runs/visual_proactivity/run

(after preparing the two data sets; every command is in README.md.)

The recipe is interaction_small's (experiments/interaction_small/config.py), with video on:

* **Video patches on**: 4 patches of 40x40 from the tasks' 80x80 frames (no resize), one frame
  per 200 ms micro-turn, so a micro-turn is 24 positions instead of 20 with video off.
* **Whole-episode windows from position 0** (`data.window_micro_turns` = the episode's 50
  micro-turns): a live session starts at position 0, and every instruction, visual event and
  response is in one window.
* **Typed instructions** (task variants `<task>_typed`): the response word of a cue instruction is
  copied from text; what must come from the frames is *when* to say it (and, for visual QA, the
  colour and shape).
* **`train.self_audio_dropout=0.5`**: half of the windows mute the model's own audio inputs, so
  its text does not lean on hearing itself; served, it hears its own generated voice.
* The visual tasks only (data/tasks/visual.py), negatives included so that a change of the
  picture alone is never a reason to speak.
"""

from interaction_jax.config_lib import base_config

TRAIN_MIX = "mix:visual_cue_typed=3,repcount_typed=3,visual_qa_typed=3,visual_negative_typed=2"


def get_config(arg=None):
    del arg
    c = base_config()
    c.layout.video_patches = 4
    c.layout.video_frame_size = 80  # the tasks draw 80x80 frames
    c.data.task = TRAIN_MIX
    c.data.data_dir = "runs/visual_proactivity/data/train"
    c.data.eval_data_dir = "runs/visual_proactivity/data/eval"
    c.data.num_episodes = 2000
    c.data.eval_num_episodes = 64
    c.data.episode_seconds = 10.0
    c.data.window_micro_turns = 50  # the whole episode, from position 0
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
    c.model.scan_layers = False  # speed on CPU (interaction_small)
    c.model.attention_impl = "xla_causal_blocks"
    c.train.num_steps = 3000
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 0.05
    c.train.log_every = 25
    c.train.eval_every = 500
    c.train.checkpoint_every = 250
    c.train.keep_last = 2
    c.train.self_audio_dropout = 0.5
    c.inference.slots = 16
    c.inference.temperature = 0.3
    return c
