"""Training data: the dataset format (manifest + per-clip annotations), its validator, the
kind-mixture sampler of the curriculum, the sample loader and the latent cache
(docs/dataset.md)."""

from factorportrait.data.annotations import ClipAnnotations, load_annotations, save_annotations
from factorportrait.data.build import build_dataset
from factorportrait.data.clip import ClipSource, crop_box
from factorportrait.data.dataset import DrawSampler, PortraitClipDataset, TooManyBadClips
from factorportrait.data.format import (
    KINDS,
    MANIFEST_NAME,
    ClipRecord,
    append_manifest,
    read_manifest,
    write_manifest,
)
from factorportrait.data.latent_cache import (
    CacheEntry,
    CacheMiss,
    LatentCache,
    PrecomputeReport,
    precompute_latents,
)
from factorportrait.data.mixture import MixtureSampler, indices_by_kind
from factorportrait.data.sampling import SamplingSpec
from factorportrait.data.training_sample import (
    EXPRESSION_DIM,
    LatentTrainingDataset,
    expression_features,
    to_training_sample,
)
from factorportrait.data.validate import Problem, ValidationReport, validate_dataset

__all__ = ["EXPRESSION_DIM", "KINDS", "MANIFEST_NAME", "CacheEntry", "CacheMiss",
           "ClipAnnotations", "ClipRecord", "ClipSource", "DrawSampler", "LatentCache",
           "LatentTrainingDataset", "MixtureSampler", "PortraitClipDataset", "PrecomputeReport",
           "Problem", "SamplingSpec", "TooManyBadClips", "ValidationReport", "append_manifest",
           "build_dataset",
           "crop_box", "expression_features", "indices_by_kind", "load_annotations",
           "precompute_latents", "read_manifest", "save_annotations", "to_training_sample",
           "validate_dataset", "write_manifest"]
