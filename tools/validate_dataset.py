"""Check a dataset folder and print every problem with its clip id.

    python tools/validate_dataset.py DATASET_DIR [--full]

Exit status 0 and "N clips OK" when the dataset is clean, 1 otherwise. What is checked:
factorportrait/data/validate.py and docs/dataset.md.
"""

from __future__ import annotations

import argparse
import sys

from factorportrait.data.validate import validate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="dataset folder (with manifest.jsonl) or a manifest file")
    parser.add_argument("--full", action="store_true",
                        help="decode every frame of every video (slow; finds mid-file damage)")
    args = parser.parse_args(argv)
    _quiet_ffmpeg()
    return validate_dataset(args.root, full_decode=args.full).print()


def _quiet_ffmpeg() -> None:
    """Silence ffmpeg's own log inside decord: every problem is reported below anyway."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)


if __name__ == "__main__":
    sys.exit(main())
