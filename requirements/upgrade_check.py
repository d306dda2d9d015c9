"""`make upgrade-check`: does tfsr still work with the newest (and the oldest) versions its ranges allow?

For each end of setup.py's ranges it resolves a scratch lock with uv (`--resolution highest`, and
`lowest-direct`: the oldest version of every direct dependency), installs it into a new virtual
environment under artifacts/upgrade-check/<end>/ with `make install` itself (`LOCK=` the scratch lock,
`VENV=` the scratch environment: the same pip commands and the same check against the lock), and runs
the smoke run there: `python -m tfsr.demo` on a MovieLens slice with the tiny text encoder and a few
steps per stage — preprocess (Beam), train, fine-tune, evaluate, retrieval train / fine-tune / evaluate,
export, batch-score (Beam RunInference), serve and score over gRPC.

It prints which packages moved against the lock (and to which versions), what passed and where a failure
was, and writes report.json beside the environments. Exit status 1 when an install or a smoke run fails.
How to act on the result: docs/DEPENDENCIES.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lock import REPO_ROOT, compile_lock, lock_path
from verify import read_pins

ENDS = {"newest": "highest", "oldest": "lowest-direct"}
SMOKE_FLAGS = [
    "--text_encoder",
    "tiny",
    "--max_user",
    "40",
    "--max_steps",
    "20",
    "--epochs",
    "1",
    "--retrieval_epochs",
    "1",
    "--retrieve_k",
    "20",
    "--top_k",
    "3",
]
LOG_TAIL = 40  # lines of a failed step's output kept in the report


def moved_packages(locked: dict[str, str], tried: dict[str, str]) -> list[dict]:
    """Packages of the scratch environment at another version than the lock's, or not in the lock:
    {name, locked, tried}. (Packages of the lock's test and benchmark extras, which the scratch
    environments leave out, are not moves: `left_out` lists them.)"""
    return [
        {"name": n, "locked": locked.get(n), "tried": v}
        for n, v in sorted(tried.items())
        if locked.get(n) != v
    ]


def left_out(locked: dict[str, str], tried: dict[str, str]) -> list[str]:
    """Locked packages the scratch environment does not have."""
    return sorted(set(locked) - set(tried))


def _step(name: str, command: list[str], log: Path, cwd: Path = REPO_ROOT) -> dict:
    """Runs one step, its output appended to `log`; {step, ok, seconds[, tail]}."""
    started = time.monotonic()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(map(str, command))}\n")
        out.flush()
        status = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    result = {"step": name, "ok": status == 0, "seconds": round(time.monotonic() - started, 1)}
    if status:
        result["tail"] = log.read_text(encoding="utf-8").splitlines()[-LOG_TAIL:]
    return result


def check_end(end: str, python_version: str, scratch: Path, data: str | None) -> dict:
    """Resolve, install and smoke-run one end of the ranges; stops at the first failed step."""
    home = scratch / end
    home.mkdir(parents=True, exist_ok=True)
    log = home / "log.txt"
    log.write_text("", encoding="utf-8")
    lock = home / "lock.txt"
    report: dict = {"end": end, "resolution": ENDS[end], "steps": []}
    try:
        compile_lock(python_version, lock, resolution=ENDS[end], extras=())
    except subprocess.CalledProcessError as err:
        report["steps"].append({"step": "resolve", "ok": False, "tail": [str(err)]})
        return report
    tried = read_pins(lock)
    report["versions"] = tried
    locked = read_pins(lock_path(python_version))
    report["moved"] = moved_packages(locked, tried)
    report["left_out"] = left_out(locked, tried)

    # a new environment, installed by the Makefile's own install recipe with this lock in place of the real one
    venv = home / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    python = str(venv / "bin" / "python")
    demo = [python, "-m", "tfsr.demo", *SMOKE_FLAGS]
    demo += ["--workdir", str(home / "demo"), "--export_base", str(home / "saved_models")]
    install = ["make", "install", f"VENV={venv}", f"LOCK={lock}", f"PYTHON={sys._base_executable}"]
    steps = [
        ("make install", install),
        ("tfsr --version", [python, "-m", "tfsr.cli", "--version"]),
        ("smoke run", [*demo, *(["--data", data] if data else [])]),
    ]
    for name, command in steps:
        print(f"[{end}] {name} ...", flush=True)
        result = _step(name, command, log)
        report["steps"].append(result)
        if not result["ok"]:
            break
    return report


def render(reports: list[dict]) -> str:
    """The report as text: per end, the outcome, the steps, the packages that moved."""
    lines = []
    for r in reports:
        ok = all(s["ok"] for s in r["steps"]) and r["steps"][-1]["step"] == "smoke run"
        lines.append(
            f"== {r['end']} versions the ranges allow (uv --resolution {r['resolution']}): "
            f"{'PASS' if ok else 'FAIL'}"
        )
        for s in r["steps"]:
            lines.append(f"   {'ok  ' if s['ok'] else 'FAIL'} {s['step']:<24} {s.get('seconds', '-')} s")
            lines += [f"       | {t}" for t in s.get("tail", [])]
        versions = r.get("versions", {})
        key = [
            "apache-beam",
            "tensorflow",
            "tf-keras",
            "tensorflow-recommenders",
            "tensorflow-text",
            "tensorflow-serving-api",
            "protobuf",
            "grpcio",
            "numpy",
            "pyarrow",
        ]
        lines.append("   tried: " + ", ".join(f"{k} {versions[k]}" for k in key if k in versions))
        moved = r.get("moved", [])
        lines.append(f"   moved against the lock: {len(moved)} packages")
        lines += [f"     {m['name']}: {m['locked'] or '-'} -> {m['tried']}" for m in moved]
        if r.get("left_out"):
            lines.append(f"   not installed (the lock's dev / bench extras): {', '.join(r['left_out'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ml-latest-small directory (default: the demo's lookup)")
    parser.add_argument(
        "--scratch", default=str(REPO_ROOT / "artifacts" / "upgrade-check"), help="where the environments go"
    )
    parser.add_argument(
        "--ends", nargs="+", choices=tuple(ENDS), default=list(ENDS), help="which ends to try"
    )
    args = parser.parse_args(argv)
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    scratch = Path(args.scratch)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    reports = [check_end(end, python_version, scratch, args.data) for end in args.ends]
    text = render(reports)
    print(text)
    summary = {
        "started": started,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()} ({platform.node()})",
        "lock": str(lock_path(python_version).relative_to(REPO_ROOT)),
        "ends": reports,
    }
    (scratch / "report.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (scratch / "report.txt").write_text(text + "\n", encoding="utf-8")
    print(f"report: {scratch / 'report.txt'}, {scratch / 'report.json'}")
    failed = [r for r in reports if not (r["steps"] and all(s["ok"] for s in r["steps"]))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
