"""Where a split's decoded chips live: in memory, or memory-mapped on the scratch disk when they do not fit.

:class:`ChipArrays` holds a split's chips and masks. It allocates plain numpy arrays when their
size is within :func:`memory_budget`, else two ``numpy.memmap`` files in a folder of its own under
:func:`scratch_dir` (never the dataset's folder), removed when the owner is garbage-collected or
the process exits. Pickled (DataLoader workers, DDP spawn), a memory-mapped store carries its
paths only and the copy reopens the files read-only; an in-memory store pickles its arrays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Mapping

import numpy as np

#: Bytes of decoded chips a split may keep in memory (overrides :data:`MEMORY_FRACTION`).
BUDGET_ENV = "CAMPSEG_CHIP_CACHE_BYTES"
#: Folder of the memory-mapped chips (default: the temporary folder, a pod's scratch volume on the cluster).
SCRATCH_ENV = "CAMPSEG_SCRATCH"
#: Share of the available memory one split's chips may take (the other split, the model, loader
#: workers and the batches need the rest).
MEMORY_FRACTION = 0.4


def decoded_bytes(count: int, bands: int, size: int, dtype: np.dtype | type) -> int:
    """Bytes of ``count`` decoded chips of ``bands`` x ``size`` x ``size`` pixels of ``dtype``, and their uint8 masks."""
    return count * size * size * (bands * np.dtype(dtype).itemsize + 1)


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """``MemAvailable`` of ``meminfo`` in bytes; None where it cannot be read (not Linux)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                return int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_budget(environ: Mapping[str, str] = os.environ, meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes one split's chips may take in memory: ``$CAMPSEG_CHIP_CACHE_BYTES``, else
    :data:`MEMORY_FRACTION` of the available memory; None (no limit) when neither is known."""
    text = environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"${BUDGET_ENV}={text!r}: must be a number of bytes >= 0")
        return value
    available = available_memory(meminfo)
    return None if available is None else int(available * MEMORY_FRACTION)


def fits_in_memory(nbytes: int, budget: int | None) -> bool:
    """Whether ``nbytes`` of chips stay in memory under ``budget`` (None: no limit)."""
    return budget is None or nbytes <= budget


def scratch_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where memory-mapped chips go: ``$CAMPSEG_SCRATCH``, else the temporary folder (``$TMPDIR``)."""
    return Path(environ.get(SCRATCH_ENV) or tempfile.gettempdir())


class ChipArrays:
    """A split's chips ``(N, C, S, S)`` and masks ``(N, S, S)``, in memory or memory-mapped.

    Args:
        count, bands, size: the split's chips, bands and pixels a side.
        dtype: the chips' pixel type (masks are uint8).
        budget: bytes allowed in memory (None: no limit); above it the arrays are memory-mapped.
        scratch: folder for the memory-mapped files (default :func:`scratch_dir`).

    Attributes:
        chips, masks: the arrays, to fill after construction.
        folder: the memory-mapped files' folder, None when in memory.
    """

    def __init__(self, count: int, bands: int, size: int, dtype: np.dtype | type, budget: int | None = None,
                 scratch: Path | None = None) -> None:
        self.chip_shape, self.mask_shape = (count, bands, size, size), (count, size, size)
        self.dtype = np.dtype(dtype)
        self.folder: Path | None = None
        if fits_in_memory(decoded_bytes(count, bands, size, dtype), budget):
            self.chips = np.empty(self.chip_shape, dtype=self.dtype)
            self.masks = np.empty(self.mask_shape, dtype=np.uint8)
            return
        parent = Path(scratch) if scratch is not None else scratch_dir()
        parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="campseg-chips-", dir=parent))
        # Only the creating process removes the folder (an unpickled copy has no finalizer).
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.chips = np.memmap(self.folder / "chips.bin", dtype=self.dtype, mode="w+", shape=self.chip_shape)
        self.masks = np.memmap(self.folder / "masks.bin", dtype=np.uint8, mode="w+", shape=self.mask_shape)

    @property
    def mapped(self) -> bool:
        """Whether the arrays are memory-mapped files."""
        return self.folder is not None

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Chip and mask ``index`` as writable arrays (copied out of a read-only map)."""
        chip, mask = self.chips[index], self.masks[index]
        if self.mapped:
            return np.array(chip), np.array(mask)
        return chip, mask

    def finish(self) -> None:
        """The arrays are filled: flush a map to its files (so other processes see them)."""
        if self.mapped:
            self.chips.flush()
            self.masks.flush()

    def close(self) -> None:
        """Drop the arrays and remove the memory-mapped files now (in the creating process)."""
        self.chips = self.masks = None
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "_cleanup"}
        if self.mapped:  # a memmap would pickle as a full in-memory copy: send the paths
            self.finish()
            state["chips"] = state["masks"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.mapped:
            self.chips = np.memmap(self.folder / "chips.bin", dtype=self.dtype, mode="r", shape=self.chip_shape)
            self.masks = np.memmap(self.folder / "masks.bin", dtype=np.uint8, mode="r", shape=self.mask_shape)
