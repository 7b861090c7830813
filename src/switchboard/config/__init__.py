"""Configuration: one YAML file, validated by pydantic, with errors that name the field and line."""

from switchboard.config.loader import ConfigError, load_config, parse_config
from switchboard.config.schema import (
    BackendConfig,
    DefaultsConfig,
    ExpertConfig,
    LlamaCppBackend,
    OpenAIBackend,
    ProcessBackend,
    SimulatedBackend,
    SwitchboardConfig,
    WorkerConfig,
)

__all__ = [
    "BackendConfig",
    "ConfigError",
    "DefaultsConfig",
    "ExpertConfig",
    "LlamaCppBackend",
    "OpenAIBackend",
    "ProcessBackend",
    "SimulatedBackend",
    "SwitchboardConfig",
    "WorkerConfig",
    "load_config",
    "parse_config",
]
