"""Where things are: the repository, the shared folder beside it, the real dev dataset."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "hotosm-philippines"
