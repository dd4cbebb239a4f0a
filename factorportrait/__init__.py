"""FactorPortrait: controllable portrait animation with disentangled expression, pose and
viewpoint on a Wan 2.1 video DiT."""

from factorportrait.config import DiTConfig
from factorportrait.models.conditions import PortraitConditions
from factorportrait.models.dit import FactorPortraitDiT

__version__ = "0.1.0"

__all__ = ["DiTConfig", "FactorPortraitDiT", "PortraitConditions", "__version__"]
