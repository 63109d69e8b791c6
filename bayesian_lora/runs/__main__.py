"""``python -m bayesian_lora.runs migrate <run folder> [...]``: rewrite old-format run folders."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bayesian_lora.runs.manifest import SampleFileError
from bayesian_lora.runs.store import migrate_legacy


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "migrate":
        print("usage: python -m bayesian_lora.runs migrate <run folder> [...]", file=sys.stderr)
        return 2
    for folder in args[1:]:
        try:
            manifest = migrate_legacy(folder)
        except (OSError, SampleFileError) as err:
            print(f"error: {folder}: {err}", file=sys.stderr)
            return 1
        print(f"{folder}: migrated ({manifest.num_samples} samples, format {manifest.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
