"""Check that this environment holds exactly what the locks pin (`make install` runs it; CI with --strict).

Compares every installed distribution with the pins of the given lock files: a locked package missing or
at another version fails; with --strict, so does a package the locks do not name (a fresh environment
has none). Then runs `pip check`, which may only report the declared requirements of packages that a
lock marked as installed with --no-deps (the encoder weights declare PyTorch; tfsr never imports it).

Run it with the environment's own interpreter: `.venv/bin/python requirements/verify.py LOCK...`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
# `pip check`: "<name> <version> requires <requirement>, which is not installed."
UNMET = re.compile(r"^(\S+) \S+ requires ")
NOT_LOCKED = {"tfsr"}  # the project itself, installed in editable mode from the working tree


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a pip-compile / uv lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    """{canonical name: version} of every distribution this interpreter sees."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def differences(pins: dict[str, str], present: dict[str, str], strict: bool) -> list[str]:
    """One line per package that is missing, at another version, or (strict) not in the locks."""
    problems = []
    for name, version in sorted(pins.items()):
        if name not in present:
            problems.append(f"{name}: locked {version}, not installed")
        elif present[name] != version:
            problems.append(f"{name}: locked {version}, installed {present[name]}")
    if strict:
        extra = sorted(set(present) - set(pins) - NOT_LOCKED)
        problems += [f"{name}: installed {present[name]}, not in the lock" for name in extra]
    return problems


def unexpected_pip_check(output: str, no_deps: set[str]) -> list[str]:
    """The lines of `pip check` output that are not an unmet requirement of a --no-deps package."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("No broken")]
    return [line for line in lines if not ((m := UNMET.match(line)) and canonical(m.group(1)) in no_deps)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+", type=Path, help="lock files installed into this environment")
    parser.add_argument(
        "--no_deps_lock",
        action="append",
        type=Path,
        default=[],
        help="a lock installed with --no-deps: its packages' own requirements may be unmet",
    )
    parser.add_argument("--strict", action="store_true", help="also fail on packages no lock names")
    args = parser.parse_args(argv)

    pins: dict[str, str] = {}
    no_deps: set[str] = set()
    for path in [*args.locks, *args.no_deps_lock]:
        pins.update(read_pins(path))
    for path in args.no_deps_lock:
        no_deps |= set(read_pins(path))
    problems = differences(pins, installed(), args.strict)
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems += [f"pip check: {line}" for line in unexpected_pip_check(check.stdout, no_deps)]
    if problems:
        print(f"{sys.prefix} does not match the lock:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"{sys.prefix}: {len(pins)} packages exactly as locked; pip check clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
