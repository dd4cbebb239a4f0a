"""Rebuild factorportrait/tracking/canonical_face.safetensors (docs/tracking.md).

    python tools/make_canonical_face.py [--identities 16] [--out PATH]

Renders procedural avatars from known head poses, finds MediaPipe's 478 landmarks in each
render, triangulates them per identity and averages (factorportrait.tracking.canonical).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "factorportrait" / "tracking" / "canonical_face.safetensors")
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save

    from factorportrait.io import atomic_write_bytes
    from factorportrait.tracking.canonical import FORMAT, build_canonical_face

    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    landmarks, used = build_canonical_face(args.identities, seed=args.seed)
    meta = {"format": FORMAT, "identities": str(used), "seed": str(args.seed)}
    atomic_write_bytes(args.out, save({"landmarks": landmarks.float().contiguous()}, meta))
    print(f"wrote {args.out}: {used} of {args.identities} identities, "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
