"""Host-side signal processing: log-mel + dMel (librosa), audio loading, video patches."""

from interaction_jax.features.audio import AudioError, ensure_audio, load_audio, load_stereo, save_wav
from interaction_jax.features.mel import (
    FeatureParams,
    dmel_decode,
    dmel_encode,
    log_mel,
    mel_filterbank,
    mel_to_audio,
)
from interaction_jax.features.video import frame_to_patches, patches_to_frame, resize_and_crop

__all__ = [
    "AudioError",
    "FeatureParams",
    "dmel_decode",
    "dmel_encode",
    "ensure_audio",
    "frame_to_patches",
    "load_audio",
    "load_stereo",
    "log_mel",
    "mel_filterbank",
    "mel_to_audio",
    "patches_to_frame",
    "resize_and_crop",
    "save_wav",
]
