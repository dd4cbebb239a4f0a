"""Synthetic training data from procedural head avatars (FactorPortrait §3, supp. §7): phone-,
studio-, ViewSweep- and DynamicSweep-like clips with exact annotations (docs/dataset.md
"Synthetic data"; command: ``tools/make_synthetic.py``).

Modules: ``config`` (settings, clip plan, seeds), ``performance`` (expression and head-pose
dynamics), ``rigs`` (cameras per kind), ``generator`` (one clip → frames + annotations),
``identity`` (the avatar identity stored as ``betas``), ``writer`` (atomic, resumable folder).
"""

from factorportrait.data.synthetic.config import (
    ClipSpec,
    SyntheticConfig,
    derive_seed,
    identity_seed,
    plan_clips,
)
from factorportrait.data.synthetic.generator import (
    RenderedClip,
    clip_controls,
    make_avatar,
    render_clip,
    render_frames,
    render_from_annotations,
)
from factorportrait.data.synthetic.identity import (
    IDENTITY_DIM,
    avatar_from_annotations,
    identity_from_vector,
    identity_to_vector,
)
from factorportrait.data.synthetic.performance import (
    Performance,
    PerformanceScript,
    sample_script,
    static_expression,
)
from factorportrait.data.synthetic.writer import (
    GenerationReport,
    generate_dataset,
    read_config,
    write_clip_files,
)

__all__ = ["IDENTITY_DIM", "ClipSpec", "GenerationReport", "Performance", "PerformanceScript",
           "RenderedClip", "SyntheticConfig", "avatar_from_annotations", "clip_controls",
           "derive_seed", "generate_dataset", "identity_from_vector", "identity_seed",
           "identity_to_vector", "make_avatar", "plan_clips", "read_config", "render_clip",
           "render_frames", "render_from_annotations", "sample_script", "static_expression",
           "write_clip_files"]
