"""TensorBoard metrics without TensorFlow: scalars, images (PNG) and audio (WAV) event files.

Only process 0 writes (`MetricWriter(logdir, enabled=jax.process_index() == 0)`).
"""

from __future__ import annotations

import io
import time
import wave

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    pcm = (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, np.asarray(image), format="png")
    return buf.getvalue()


class MetricWriter:
    """Writes scalars/images/audio to `logdir` as TensorBoard events; a no-op when disabled."""

    def __init__(self, logdir: str, enabled: bool = True):
        self.enabled = enabled
        self._w = EventFileWriter(logdir, flush_secs=10) if enabled else None

    def _emit(self, step: int, value: summary_pb2.Summary.Value) -> None:
        if not self.enabled:
            return
        ev = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value]))
        self._w.add_event(ev)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, v in values.items():
            self._emit(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(v)))

    def image(self, step: int, tag: str, image: np.ndarray | bytes) -> None:
        """`image`: HxWx{3,4} array (uint8 or float in [0,1]) or PNG bytes."""
        png = image if isinstance(image, bytes) else _png_bytes(image)
        if isinstance(image, bytes):
            import matplotlib.image as mpimg

            h, w = mpimg.imread(io.BytesIO(png)).shape[:2]
        else:
            h, w = np.asarray(image).shape[:2]
        img = summary_pb2.Summary.Image(height=h, width=w, colorspace=4, encoded_image_string=png)
        self._emit(step, summary_pb2.Summary.Value(tag=tag, image=img))

    def audio(self, step: int, tag: str, audio: np.ndarray, sample_rate: int) -> None:
        data = _wav_bytes(audio, sample_rate)
        au = summary_pb2.Summary.Audio(
            sample_rate=float(sample_rate),
            num_channels=1,
            length_frames=int(np.asarray(audio).shape[-1]),
            encoded_audio_string=data,
            content_type="audio/wav",
        )
        self._emit(step, summary_pb2.Summary.Value(tag=tag, audio=au))

    def flush(self) -> None:
        if self.enabled:
            self._w.flush()

    def close(self) -> None:
        if self.enabled:
            self._w.close()


def read_tags(logdir: str) -> dict[str, str]:
    """{tag: plugin name} of everything in `logdir` ("scalars", "images", "audio")."""
    import glob

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, str] = {}
    for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
        for ev in EventFileLoader(path).Load():
            for v in ev.summary.value:
                kind = v.WhichOneof("value")
                out[v.tag] = v.metadata.plugin_data.plugin_name or str(kind)
    return out


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars in `logdir` as {tag: [(step, value), ...]} (for tests and scripts)."""
    import glob

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
        for ev in EventFileLoader(path).Load():
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
                elif v.metadata.plugin_data.plugin_name == "scalars" and v.tensor.float_val:
                    # the loader migrates simple_value into the tensor form
                    out.setdefault(v.tag, []).append((ev.step, float(v.tensor.float_val[0])))
    return out
