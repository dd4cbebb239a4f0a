"""FactorPortrait: controllable portrait animation with disentangled expression, pose and
viewpoint on a Wan 2.1 video DiT."""

from factorportrait.config import DiTConfig
from factorportrait.models.conditions import PortraitConditions
from factorportrait.models.dit import FactorPortraitDiT
from factorportrait.pipeline import FactorPortraitPipeline

__version__ = "0.1.0"

__all__ = ["DiTConfig", "FactorPortraitDiT", "FactorPortraitPipeline", "PortraitConditions",
           "__version__"]
