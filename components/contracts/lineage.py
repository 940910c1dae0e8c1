"""Which artifacts of a run folder belong together: digests recorded in each artifact, checked on read.

Every artifact records the digests of what it was built from (``docs/artifacts.md``):

- ``stats.json`` ``lineage.manifest``: digest of the manifest's pairs (stems, paths, groups,
  splits) written beside it. The **statistics digest** is the SHA-256 of ``stats.json`` itself.
- ``training_history.json`` ``lineage``: the statistics digest and the checkpoint's digest.
- ``models/export_report.json`` ``lineage``: the statistics and checkpoint digests and the digest
  of each model file. The **models digest** is the SHA-256 of the export report.
- ``evaluation/metrics.json`` ``lineage``: the statistics and models digests.
- the DLPK's ``.emd`` ``CampsegLineage``: the statistics and models digests.
- the STAC item's ``campseg:lineage``: every digest above and the DLPK's.

:func:`verify` checks what a stage reads against the current files; a mix (say a new
``stats.json`` beside a model trained on other statistics) raises a
:class:`~components.contracts.errors.RunFolderError` that names the artifact and what to re-run.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Iterable

from components.contracts.errors import RunFolderError
from components.contracts.run_layout import RunLayout, read_json

#: What each artifact is built from (direct inputs); the order is the pipeline's.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "statistics": (),
    "training": ("statistics",),
    "models": ("statistics", "training"),
    "evaluation": ("statistics", "models"),
    "dlpk": ("statistics", "models"),
    "stac": ("statistics", "training", "models", "evaluation", "dlpk"),
}
#: The stage that makes each artifact (for "re-run ..." hints).
STAGE_OF = {"statistics": "stats", "training": "train", "models": "export", "evaluation": "evaluate",
            "dlpk": "dlpk", "stac": "stac"}


def dependents(name: str) -> list[str]:
    """Every artifact built (directly or not) from ``name``, in pipeline order."""
    found: list[str] = []
    for other, inputs in DEPENDS_ON.items():
        if name in inputs or any(i in found for i in inputs):
            found.append(other)
    return found


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def pairs_digest(manifest: dict) -> str:
    """Digest of a manifest's pairs (not of where the dataset lay: a moved copy keeps it)."""
    text = json.dumps(manifest.get("pairs", []), sort_keys=True, separators=(",", ":"))
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def _short(digest: Any) -> str:
    return str(digest)[:19] + "…" if isinstance(digest, str) and len(digest) > 20 else str(digest)


def _rerun(artifact: str) -> str:
    stage = STAGE_OF[artifact]
    later = [STAGE_OF[a] for a in dependents(artifact)]
    chain = " then ".join([stage, *later]) if later else stage
    return f"re-run {chain} on this folder (python -m components {stage} ...), or run everything into a new folder"


def _mixed(layout: RunLayout, artifact: str, what: str) -> RunFolderError:
    return RunFolderError(f"{layout.root}: mixed run folder: {what}; {_rerun(artifact)}")


def _lineage(layout: RunLayout, path: Path, artifact: str) -> dict:
    doc = read_json(path)
    lineage = doc.get("lineage") if isinstance(doc, dict) else None
    if not isinstance(lineage, dict):
        raise _mixed(layout, artifact, f"{path.relative_to(layout.root)} records no lineage "
                                       "(made by an older campseg, or not by campseg)")
    return lineage


def _same(layout: RunLayout, artifact: str, where: str, recorded: Any, name: str, actual: str) -> None:
    if recorded != actual:
        raise _mixed(layout, artifact, f"{where} was built from {name} {_short(recorded)}, but the folder's "
                                       f"{name} is {_short(actual)}")


def dlpk_lineage(package: Path) -> dict:
    """The ``CampsegLineage`` of a DLPK's ``.emd``."""
    try:
        with zipfile.ZipFile(package) as archive:
            emds = [n for n in archive.namelist() if n.endswith(".emd")]
            emd = json.loads(archive.read(emds[0])) if len(emds) == 1 else {}
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise RunFolderError(f"{package}: not a readable DLPK ({exc})") from None
    lineage = emd.get("CampsegLineage")
    return lineage if isinstance(lineage, dict) else {}


def _same_inputs(layout: RunLayout, artifact: str, where: str, lineage: dict, found: dict[str, Any]) -> None:
    """An artifact built from the statistics (and the models, when they were read) now in the folder."""
    _same(layout, artifact, where, lineage.get("statistics"), "stats.json", found["statistics"])
    if "models" in found:
        _same(layout, artifact, where, lineage.get("models"), "models/export_report.json", found["models"])


def verify(layout: RunLayout, reads: Iterable[str]) -> dict[str, Any]:
    """Check that the artifacts a stage ``reads`` belong together; return their digests.

    ``reads`` names artifacts of :data:`DEPENDS_ON`; each one that is present is checked against
    the digests it recorded (``training`` and ``dlpk`` may be absent: a KFP step sees only its
    inputs). Returns ``{"statistics": ..., "checkpoint": ..., "models": ..., "evaluation": ...,
    "dlpk": {name: digest}}`` for what was read.

    Raises:
        RunFolderError: an artifact was built from other inputs than the folder now holds.
    """
    reads = set(reads)
    found: dict[str, Any] = {}
    stats = read_json(layout.stats)
    found["statistics"] = file_digest(layout.stats)
    recorded = (stats.get("lineage") or {}).get("manifest") if isinstance(stats, dict) else None
    if layout.splits.exists():
        if recorded is None:
            raise _mixed(layout, "statistics", "stats.json records no lineage (made by an older campseg)")
        _same(layout, "statistics", "stats.json", recorded, "dataset_manifest.json pairs",
              pairs_digest(read_json(layout.splits)))

    if "training" in reads and layout.history.exists():
        lineage = _lineage(layout, layout.history, "training")
        _same(layout, "training", "training_history.json", lineage.get("statistics"), "stats.json",
              found["statistics"])
        if layout.checkpoint.exists():
            found["checkpoint"] = file_digest(layout.checkpoint)
            _same(layout, "training", "training_history.json", lineage.get("checkpoint"),
                  "checkpoints/best.ckpt", found["checkpoint"])
        else:
            found["checkpoint"] = lineage.get("checkpoint")

    if "models" in reads and layout.export_report.exists():
        lineage = _lineage(layout, layout.export_report, "models")
        _same(layout, "models", "models/", lineage.get("statistics"), "stats.json", found["statistics"])
        if "checkpoint" in found:
            _same(layout, "models", "models/", lineage.get("checkpoint"), "checkpoints/best.ckpt",
                  found["checkpoint"])
        for name, digest in (lineage.get("files") or {}).items():
            path = layout.models_dir / name
            if path.exists() and file_digest(path) != digest:
                raise _mixed(layout, "models", f"models/{name} is not the file the export report records")
        found["checkpoint"] = found.get("checkpoint", lineage.get("checkpoint"))
        found["models"] = file_digest(layout.export_report)

    if "evaluation" in reads and layout.metrics.exists():
        _same_inputs(layout, "evaluation", "evaluation/", _lineage(layout, layout.metrics, "evaluation"), found)
        found["evaluation"] = file_digest(layout.metrics)

    if "dlpk" in reads and layout.esri_dir.is_dir():
        found["dlpk"] = {}
        for package in sorted(layout.esri_dir.glob("*.dlpk")):
            _same_inputs(layout, "dlpk", f"esri/{package.name}", dlpk_lineage(package), found)
            found["dlpk"][package.name] = file_digest(package)
    return found
