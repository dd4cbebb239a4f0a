"""Training data: the dataset format (manifest + per-clip annotations), its validator, and
the kind-mixture sampler of the curriculum (docs/dataset.md)."""

from factorportrait.data.annotations import ClipAnnotations, load_annotations, save_annotations
from factorportrait.data.format import (
    KINDS,
    MANIFEST_NAME,
    ClipRecord,
    append_manifest,
    read_manifest,
    write_manifest,
)
from factorportrait.data.mixture import MixtureSampler, indices_by_kind
from factorportrait.data.validate import Problem, ValidationReport, validate_dataset

__all__ = ["KINDS", "MANIFEST_NAME", "ClipAnnotations", "ClipRecord", "MixtureSampler",
           "Problem", "ValidationReport", "append_manifest", "indices_by_kind",
           "load_annotations", "read_manifest", "save_annotations", "validate_dataset",
           "write_manifest"]
