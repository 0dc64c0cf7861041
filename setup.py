"""interaction_jax: a JAX research codebase for real-time interaction models."""

from setuptools import find_packages, setup

setup(
    name="interaction_jax",
    version="0.1.0",
    description="JAX/Flax NNX interaction models: micro-turn streaming over audio, video and text.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["interaction_jax", "interaction_jax.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"interaction_jax": ["serve_page.html"]},  # the browser client served at / (serve.py)
    # Lower bounds: the oldest versions the suite was run with (jax 0.10 on CPU, 0.11 on GPU); the exact
    # versions `make venv` and CI install are pinned in constraints.txt.
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.8",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "array-record>=0.7.0",
        "librosa>=0.10.2",
        "soundfile>=0.12",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "tensorboard>=2.15",
        "numpy>=1.26",
        "scipy>=1.11",  # features/griffin_lim.py: float32 FFTs (also what librosa builds on)
        "espeakng-loader>=0.2.4",
        "matplotlib>=3.8",
        "webrtcvad-wheels>=2.0.14",  # the turn-based baseline's VAD (eval/baseline.py); binary wheels
        "aiohttp>=3.14",  # interaction_jax.serve / client: HTTP + WebSocket (tests/serve run in `make test`)
    ],
    extras_require={
        "test": ["pytest>=8.0", "hypothesis>=6.100"],
        "dev": ["ruff>=0.6"],
        # experiments/perf/streaming.py's Hugging Face row only (a benchmark, never a runtime dependency)
        "hf": ["torch>=2.4", "transformers>=4.46"],
    },
)
