"""Picture of one packed window: every stream on a shared micro-turn time axis.

Rows (top to bottom): user audio (dMel codes), typed user text, background results, model
text targets, model audio (log-mel targets), and video frames. Text slots are drawn as the
characters they hold; control tokens as <NAME>.
"""

from __future__ import annotations

import numpy as np

from interaction_jax.streams.layout import Kind, StreamLayout
from interaction_jax.streams.tokenizer import NUM_CONTROL, Control


def _token_label(tok: int, tokenizer) -> str:
    if tok == Control.NOTHING or tok == Control.PAD:
        return ""
    if tok < NUM_CONTROL:
        return "<" + Control(tok).name.lower()[:5] + ">"
    return tokenizer.decode([tok]).replace(" ", "_")


def plot_window(window: dict, layout: StreamLayout, tokenizer, path: str, title: str = "") -> str:
    """Renders a packed window (unbatched, see `layout.packed_spec`) to a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = np.asarray(window["micro_turn"])
    W = int(turns.max() - turns.min() + 1)  # micro-turns in the window (video may be in fewer)
    T = layout.micro_turn_s
    t0 = int(window["micro_turn"][0]) * T
    A, F, M = layout.audio_positions, layout.frames_per_audio_position, layout.n_mels

    def gather(kind, key):
        idx = layout.kind_indices(kind, W).reshape(-1)
        return window[key][idx]

    fig, axes = plt.subplots(6, 1, figsize=(max(8, W * 0.6), 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1, 1, 1, 3, 1.2]})
    extent = [t0, t0 + W * T, 0, M]
    user = gather(Kind.USER_AUDIO, "dmel").reshape(W * A * F, M) if A else np.zeros((1, M))
    axes[0].imshow(user.T, aspect="auto", origin="lower", extent=extent, cmap="magma", vmin=0, vmax=15)
    axes[0].set_ylabel("user audio\n(dMel)")
    rows = [(Kind.USER_TEXT, "token_ids", "user text"), (Kind.BACKGROUND, "token_ids", "background"),
            (Kind.MODEL_TEXT, "text_targets", "model text")]
    for ax, (kind, key, name) in zip(axes[1:4], rows):
        ax.set_ylabel(name)
        ax.set_yticks([])
        sl = layout.block_slice(kind)
        S = sl.stop - sl.start
        if not S:
            continue
        toks = gather(kind, key).reshape(W, S)
        for w in range(W):
            base = t0 + w * T + (T if kind == Kind.MODEL_TEXT else 0)  # outputs play one turn later
            for i, tok in enumerate(toks[w]):
                lab = _token_label(int(tok), tokenizer)
                if lab:
                    ax.text(base + (i + 0.5) * T / S, 0.5, lab, ha="center", va="center", fontsize=7)
        ax.set_ylim(0, 1)
    model = gather(Kind.MODEL_AUDIO, "mel_targets").reshape(W * A * F, M) if A else np.zeros((1, M))
    axes[4].imshow(model.T, aspect="auto", origin="lower", extent=[t0 + T, t0 + (W + 1) * T, 0, M],
                   cmap="viridis", vmin=-7, vmax=2)
    axes[4].set_ylabel("model audio\n(log-mel target)")
    ax = axes[5]
    ax.set_ylabel("video")
    ax.set_yticks([])
    for w in range(W):
        if window["video_present"][w] and layout.video_patches:
            from interaction_jax.features.video import patches_to_frame

            img = patches_to_frame(window["patches"][w], layout.video_frame_size)
            ax.imshow(img, extent=[t0 + w * T, t0 + (w + 1) * T, 0, 1], aspect="auto")
    ax.set_ylim(0, 1)
    for a in axes:
        for w in range(W + 2):
            a.axvline(t0 + w * T, color="gray", lw=0.3)
    axes[-1].set_xlim(t0, t0 + (W + 1) * T)
    axes[-1].set_xlabel("time (s); vertical lines = micro-turn boundaries; outputs drawn when they play")
    fig.suptitle(title or f"packed window: micro-turns {int(window['micro_turn'][0])}..+{W}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
