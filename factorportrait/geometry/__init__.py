"""Cameras, camera files, trajectories and ray maps (OpenCV convention, metres; docs/cameras.md).

``plot_trajectory`` imports matplotlib only when called.
"""

from factorportrait.geometry.cameras import (
    Cameras,
    intrinsics_from_fov,
    interpolate_cameras,
    invert_rigid,
    look_at,
)
from factorportrait.geometry.formats import (
    load_cameras,
    load_cameras_json,
    load_nerf_transforms,
    load_realestate10k,
    opencv_to_opengl,
    opengl_to_opencv,
    save_cameras,
    save_cameras_json,
    save_nerf_transforms,
    save_realestate10k,
)
from factorportrait.geometry.plot import plot_trajectory
from factorportrait.geometry.rays import (
    dit_rays,
    head_pose_ray_map,
    matrix_from_rts,
    plucker_rays,
    rts_from_matrix,
)
from factorportrait.geometry.trajectories import (
    DEFAULT_DISTANCE,
    DEFAULT_FOV_DEG,
    EASINGS,
    HEAD_CENTER,
    TRAJECTORY_PRESETS,
    arc,
    dolly,
    ease,
    hold,
    jitter,
    make_trajectory,
    orbit,
    pan,
    reverse,
    sample_viewsweep,
    sequence,
    spiral,
    static,
    tilt,
    view_angles,
    zoom,
)

__all__ = [
    "Cameras", "intrinsics_from_fov", "interpolate_cameras", "invert_rigid", "look_at",
    "load_cameras", "load_cameras_json", "load_nerf_transforms", "load_realestate10k",
    "opencv_to_opengl", "opengl_to_opencv", "save_cameras", "save_cameras_json",
    "save_nerf_transforms", "save_realestate10k", "plot_trajectory",
    "dit_rays", "head_pose_ray_map", "matrix_from_rts", "plucker_rays", "rts_from_matrix",
    "DEFAULT_DISTANCE", "DEFAULT_FOV_DEG", "EASINGS", "HEAD_CENTER", "TRAJECTORY_PRESETS",
    "arc", "dolly", "ease", "hold", "jitter", "make_trajectory", "orbit", "pan", "reverse",
    "sample_viewsweep", "sequence", "spiral", "static", "tilt", "view_angles", "zoom",
]
