"""Which models the server serves: ``models.config`` (a ModelServerConfig text proto) and version policies.

Owns :class:`ModelConfig` (one model's name, base path, version policy and labels) and the parsing of the
same ``models.config`` the stock ``tensorflow_model_server`` reads. Kept apart from loading
(:mod:`serving.versions`) so a config can be read and checked without TensorFlow or a running server.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


@dataclasses.dataclass
class ModelConfig:
    """One served model: its name, base path and version policy.

    Args:
      name: the name requests address.
      base_path: directory holding integer version subdirectories.
      policy: "latest" (the `num_versions` highest), "all", or "specific" (`versions`).
      num_versions: for "latest".
      versions: for "specific".
      version_labels: label -> version.
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.policy not in ("latest", "all", "specific"):
            raise ValueError(f"model {self.name!r}: unknown version policy {self.policy!r}")
        if self.policy == "latest" and self.num_versions < 1:
            raise ValueError(
                f"model {self.name!r}: latest.num_versions must be >= 1, got {self.num_versions}"
            )

    def wanted(self, on_disk: Sequence[int]) -> list[int]:
        on_disk = sorted(on_disk)
        if self.policy == "all":
            return on_disk
        if self.policy == "specific":
            return [v for v in on_disk if v in set(self.versions)]
        return on_disk[-self.num_versions :]


def parse_model_config(text: str, relative_to: str | os.PathLike | None = None) -> list[ModelConfig]:
    """ModelServerConfig text proto -> ModelConfigs. Relative base paths are taken from `relative_to` (cwd)."""
    proto = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, proto)
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError("models.config needs a model_config_list (custom_model_config is not supported)")
    out = []
    for c in proto.model_config_list.config:
        if c.model_platform and c.model_platform != "tensorflow":
            raise ValueError(f"model {c.name!r}: model_platform {c.model_platform!r} is not supported")
        base = c.base_path
        if relative_to is not None and not os.path.isabs(base):
            base = os.path.join(str(relative_to), base)
        policy = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        out.append(
            ModelConfig(
                name=c.name,
                base_path=base,
                policy=policy,
                num_versions=(c.model_version_policy.latest.num_versions or 1) if policy == "latest" else 1,
                versions=tuple(c.model_version_policy.specific.versions) if policy == "specific" else (),
                version_labels=dict(c.version_labels),
            )
        )
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in models.config: {names}")
    return out


def read_model_config(
    path: str | os.PathLike, relative_to: str | os.PathLike | None = None
) -> list[ModelConfig]:
    return parse_model_config(pathlib.Path(path).read_text(encoding="utf-8"), relative_to)
