"""What a synthetic dataset contains: :class:`SyntheticConfig`, the clip plan and the seeds.

Every clip has its own seed, derived from (global seed, identity, kind, clip index) by hashing,
so any clip can be regenerated alone — which is what lets an interrupted run resume into
exactly the dataset an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields

from factorportrait.data.format import KINDS, ClipRecord

CONFIG_FORMAT = "factorportrait.synthetic"
CONFIG_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of one synthetic dataset (all of them fix its content).

    Attributes:
        identities: avatars; the last ``heldout`` of them form the ``heldout`` split.
        clips_per_kind: clips of each kind per identity (studio: takes, each ``studio_views``
            clips of one performance).
        frames: frames per clip (any length >= 2; training cuts 4k + 1 windows from clips).
        width, height: pixels, multiples of 16.
        fps: frame rate; performances are timed in seconds.
        seed: global seed.
        kinds: which of phone, studio, viewsweep, dynamicsweep to write.
        studio_views: cameras per studio take.
        supersample: anti-aliasing factor of the renderer.
        lossless_rgb: exact RGB videos (``libx264rgb -qp 0``) instead of H.264 CRF 15; normal
            maps are always lossless.
        capture_seconds: length of each identity's long performance that DynamicSweep cuts its
            segments from (at least twice a clip is used).
        normals_expression: whether the normal maps (the pose condition) show the face's
            expression. ``False`` renders them from the avatar with a neutral face in the same
            head pose and camera, so the expression reaches the DiT only through the
            expression codes, as FactorPortrait factors it (§4.1-4.2: normal maps carry head
            pose, codes carry expression). The RGB video always shows the expression.
    """

    identities: int = 8
    heldout: int = 2
    clips_per_kind: int = 1
    frames: int = 49
    width: int = 128
    height: int = 128
    fps: float = 25.0
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    studio_views: int = 4
    supersample: int = 2
    lossless_rgb: bool = True
    capture_seconds: float = 20.0
    normals_expression: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        for name, low in (("identities", 1), ("heldout", 0), ("clips_per_kind", 1),
                          ("frames", 2), ("seed", 0), ("studio_views", 1), ("supersample", 1)):
            _check_int(name, getattr(self, name), low)
        if self.heldout > self.identities:
            raise ValueError(f"heldout: at most identities ({self.identities}), got "
                             f"{self.heldout}")
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, 16)
            if value % 16:
                raise ValueError(f"{name}: must be a multiple of 16 (the DiT's patch grid at "
                                 f"1/8 latent resolution), got {value}")
        for name in ("fps", "capture_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive number, got {value!r}")
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown or not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: expected distinct names from {', '.join(KINDS)}, got "
                             f"{', '.join(self.kinds) or 'none'}")
        for name in ("lossless_rgb", "normals_expression"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(  # noqa: TRY004 - configs raise ValueError (STYLE.md)
                    f"{name}: must be True or False, got {getattr(self, name)!r}")

    @property
    def capture_duration(self) -> float:
        """Seconds of each identity's DynamicSweep source performance."""
        return max(float(self.capture_seconds), 2.0 * self.frames / self.fps)

    def to_json(self) -> dict:
        """The config as written to ``synthetic.json`` (with format and version)."""
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
                **{k: list(v) if k == "kinds" else v for k, v in asdict(self).items()}}

    @classmethod
    def from_json(cls, data: dict) -> SyntheticConfig:
        """Inverse of :meth:`to_json`; ``ValueError`` for another format, version or fields."""
        if data.get("format") != CONFIG_FORMAT or data.get("version") != CONFIG_VERSION:
            raise ValueError(f"not a {CONFIG_FORMAT} v{CONFIG_VERSION} config: "
                             f"format {data.get('format')!r}, version {data.get('version')!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - {"format", "version"})
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid: "
                             f"{', '.join(sorted(names))}")
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the global seed and a path of names/indices (stable across runs,
    processes and platforms: SHA-256, not Python's salted ``hash``)."""
    text = "/".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class ClipSpec:
    """One planned clip. ``clip_index``: its index among the identity's clips of its kind (the
    take for studio); ``view``: the studio camera (``None`` otherwise)."""

    id: str
    kind: str
    identity: str
    identity_index: int
    clip_index: int
    view: int | None
    take: str | None
    split: str

    def record(self, config: SyntheticConfig) -> ClipRecord:
        """The manifest line of this clip (files under ``videos/``, ``normals/``,
        ``annotations/``)."""
        return ClipRecord(id=self.id, kind=self.kind, identity=self.identity, fps=config.fps,
                          video=f"videos/{self.id}.mp4", normals=f"normals/{self.id}.mp4",
                          annotations=f"annotations/{self.id}.safetensors", take=self.take,
                          split=self.split, num_frames=config.frames)


def identity_name(index: int) -> str:
    return f"syn{index:04d}"


def identity_seed(config: SyntheticConfig, index: int) -> int:
    """Seed of identity ``index``'s avatar (``AvatarIdentity.sample``)."""
    return derive_seed(config.seed, "identity", index)


def plan_clips(config: SyntheticConfig) -> list[ClipSpec]:
    """Every clip of the dataset, in writing order: identity, kind, clip, view.

    Ids: ``syn0003_phone00``, ``syn0003_studio01_cam2`` (take ``syn0003_studio01``), …
    """
    plan = []
    for index in range(config.identities):
        identity = identity_name(index)
        split = "heldout" if index >= config.identities - config.heldout else "train"
        for kind in config.kinds:
            for clip in range(config.clips_per_kind):
                name = f"{identity}_{kind}{clip:02d}"
                if kind != "studio":
                    plan.append(ClipSpec(name, kind, identity, index, clip, None, None, split))
                    continue
                plan += [ClipSpec(f"{name}_cam{view}", kind, identity, index, clip, view, name,
                                  split) for view in range(config.studio_views)]
    return plan
