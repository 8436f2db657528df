"""archlab: every transformer family in one library, and a budget-matched way to compare them."""

from archlab.config import ModelConfig
from archlab.errors import ArchlabError, ConfigError
from archlab.model import build_model, count_params, flops_per_example, flops_per_token, get_preset

__version__ = "0.1.0"

__all__ = [
    "ArchlabError",
    "ConfigError",
    "ModelConfig",
    "__version__",
    "build_model",
    "count_params",
    "flops_per_example",
    "flops_per_token",
    "get_preset",
]
