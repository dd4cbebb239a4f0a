"""Draw (and optionally export) a camera trajectory.

    python tools/trajectory.py orbit --frames 49 --degrees 90 --out traj.png
    python tools/trajectory.py dolly --frames 25 --end-distance 0.4 --easing ease_in_out \
        --out dolly.png --export dolly.transforms.json
    python tools/trajectory.py --file cameras.txt --width 512 --height 512 --out re10k.png

Export formats by name: ``*transforms.json`` (NeRF), ``*.json`` (ours), ``*.txt`` (RealEstate10K).
Conventions: docs/cameras.md.
"""

from __future__ import annotations

import argparse
import sys

from factorportrait.geometry import (
    HEAD_CENTER,
    TRAJECTORY_PRESETS,
    jitter,
    load_cameras,
    make_trajectory,
    plot_trajectory,
    save_cameras,
)

# CLI flag → preset parameter (only flags the user gave are passed on)
PRESET_FLAGS = {
    "frames": "frames", "degrees": "degrees", "distance": "distance",
    "end_distance": "end_distance",
    "yaw": "yaw_deg", "elevation": "elevation_deg", "end_elevation": "end_elevation_deg",
    "end_focal": "end_focal", "fov": "fov_deg", "width": "width", "height": "height",
    "easing": "easing", "target": "target",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", choices=sorted(TRAJECTORY_PRESETS))
    parser.add_argument("--file", help="read a trajectory file instead of a preset")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--degrees", type=float, help="sweep angle (orbit, spiral, arc, pan, tilt)")
    parser.add_argument("--distance", type=float, help="start distance to the target, metres")
    parser.add_argument("--end-distance", type=float, help="dolly/spiral end distance, metres")
    parser.add_argument("--yaw", type=float, help="start yaw, degrees")
    parser.add_argument("--elevation", type=float, help="start elevation, degrees (+ = above)")
    parser.add_argument("--end-elevation", type=float, help="spiral end elevation, degrees")
    parser.add_argument("--end-focal", type=float, help="zoom end focal length, pixels")
    parser.add_argument("--fov", type=float, help="horizontal field of view, degrees")
    parser.add_argument("--width", type=int, help="image width (also for RealEstate10K files)")
    parser.add_argument("--height", type=int, help="image height (also for RealEstate10K files)")
    parser.add_argument("--easing", help="linear | ease_in_out")
    parser.add_argument("--target", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="look-at point, metres")
    parser.add_argument("--jitter-deg", type=float, default=0.0, help="rotation shake std, degrees")
    parser.add_argument("--jitter-m", type=float, default=0.0, help="translation shake std, metres")
    parser.add_argument("--seed", type=int, default=0, help="jitter seed")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--export", help="also write the cameras (*.json, *transforms.json, *.txt)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.preset is None) == (args.file is None):
        parser.error("give exactly one of PRESET or --file")
    try:
        if args.file:
            cameras = load_cameras(args.file, width=args.width, height=args.height)
            target = args.target
        else:
            params = {name: getattr(args, flag) for flag, name in PRESET_FLAGS.items()
                      if getattr(args, flag) is not None}
            cameras = make_trajectory(args.preset, **params)
            target = args.target or HEAD_CENTER
        if args.jitter_deg or args.jitter_m:
            cameras = jitter(cameras, args.jitter_deg, args.jitter_m, args.seed)
        plot_trajectory(cameras, args.out, target=target, title=args.preset or args.file)
        if args.export:
            save_cameras(cameras, args.export)
    except ValueError as error:
        parser.error(str(error))
    print(f"{len(cameras)} cameras → {args.out}" + (f", {args.export}" if args.export else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
