"""Model types by name, so that a config (and a saved model) can name its class."""

from __future__ import annotations

from collections.abc import Callable

MODEL_TYPES: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: registers a `MultiDomainModel` subclass as `ModelConfig.model_type == name`.

    A team's subclass registered under its own name is rebuilt by `load_model` from the saved config.

    Example:
      >>> @register_model("team_search_v2")
      ... class TeamModel(SRFoundationModel): ...
    """

    def decorate(cls: type) -> type:
        if name in MODEL_TYPES and MODEL_TYPES[name] is not cls:
            raise ValueError(f"model type {name!r} is already registered to {MODEL_TYPES[name].__qualname__}")
        MODEL_TYPES[name] = cls
        cls.model_type = name
        return cls

    return decorate


def model_class(name: str) -> type:
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown model_type {name!r}; registered: {sorted(MODEL_TYPES)}") from None
