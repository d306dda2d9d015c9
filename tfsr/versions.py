"""The versions of tfsr and of the stack it runs on, for `tfsr --version` and for the records that
artefacts keep of what made them (samples' ``manifest.json``, the export's info file).

Read from the installed distributions' metadata, so asking costs no TensorFlow or Beam import.
"""

from __future__ import annotations

import platform
from importlib import metadata

import tfsr

# distribution name -> the name shown; the fast-moving dependencies setup.py caps (docs/DEPENDENCIES.md)
STACK = {
    "tensorflow": "TensorFlow",
    "tf-keras": "tf-keras",
    "tensorflow-recommenders": "TFRS",
    "apache-beam": "Apache Beam",
    "tensorflow-text": "TF Text",
    "tensorflow-serving-api": "TF Serving API",
    "protobuf": "protobuf",
    "grpcio": "grpcio",
}


def stack_versions() -> dict[str, str | None]:
    """{"tfsr", "python", then each STACK distribution: its version, None when not installed}."""
    versions: dict[str, str | None] = {"tfsr": tfsr.__version__, "python": platform.python_version()}
    for distribution in STACK:
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    return versions


def format_versions(versions: dict[str, str | None]) -> str:
    """The `tfsr --version` text: one "name version" line each."""
    names = {"tfsr": "tfsr", "python": "Python", **STACK}
    width = max(len(n) for n in names.values())
    return "\n".join(f"{names[k]:<{width}}  {v or 'not installed'}" for k, v in versions.items())
