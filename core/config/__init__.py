"""The run configuration: schema (dataclasses with help/bounds metadata), YAML I/O and validation.

Qt-free and light: imports only the standard library and PyYAML.
"""

from core.config.io import (
    ConfigError,
    ConfigProblem,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_run_config,
    load_run_config,
    resolve_paths,
    save_run_config,
    validate_run_config,
)
from core.config.schema import (
    SCHEMA_VERSION,
    SECTIONS,
    DataConfig,
    FieldInfo,
    LoraSettings,
    ModelConfig,
    RunConfig,
    TrainingSettings,
    all_fields,
    field_info,
    get_value,
    iter_fields,
    set_value,
)

__all__ = [
    "SCHEMA_VERSION",
    "SECTIONS",
    "ConfigError",
    "ConfigProblem",
    "DataConfig",
    "FieldInfo",
    "LoraSettings",
    "ModelConfig",
    "RunConfig",
    "TrainingSettings",
    "all_fields",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_run_config",
    "field_info",
    "get_value",
    "iter_fields",
    "load_run_config",
    "resolve_paths",
    "save_run_config",
    "set_value",
    "validate_run_config",
]
