"""Framework-free analytics: model spec, catalog, shape inference and predictions.

This package never imports a deep-learning framework.
"""

from xfbench.analytics.catalog import CATALOG, catalog_model, load_spec_file, resolve_model
from xfbench.analytics.shapes import infer_shapes, same_padding
from xfbench.analytics.spec import ModelSpec, SpecError

__all__ = [
    "CATALOG",
    "ModelSpec",
    "SpecError",
    "catalog_model",
    "infer_shapes",
    "load_spec_file",
    "resolve_model",
    "same_padding",
]
