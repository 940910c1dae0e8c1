"""Small datasets made on the fly, and the parameters of a small, fast pipeline run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: A small, fast pipeline run: chips at their own size, a narrow 3-level U-Net.
SMALL_RUN = dict(dataset_image_size=0, train_base_channels=8, train_depth=3, train_batch_size=8)


def make_dataset(root: Path, n_groups: int = 4, per_group: int = 2, size: int = 32) -> Path:
    """A small valid dataset: ``n_groups`` zoom-18 XYZ tiles, each with zoom-19 children."""
    rng = np.random.default_rng(0)
    (root / "chips").mkdir(parents=True)
    (root / "labels").mkdir()
    for g in range(n_groups):
        x, y = 100 + 3 * g, 400
        stems = [f"OAM-{x}-{y}-18"] + [f"OAM-{2 * x + c % 2}-{2 * y + c // 2}-19" for c in range(per_group)]
        for stem in stems:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "chips" / f"{stem}.png")
            mask = (rng.random((size, size)) > 0.8).astype(np.uint8) * 255
            Image.fromarray(mask).save(root / "labels" / f"{stem}.png")
    return root
