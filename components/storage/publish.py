"""Publish a finished run's artifacts to object storage, with a STAC item whose hrefs point there."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from components.contracts.ownership import MARKER, open_output
from components.contracts.run_layout import ARTIFACTS, RunLayout
from components.storage.transfer import upload_dir, upload_file
from components.storage.uris import join_uri

#: What is published: the files of every artifact but the STAC item (``metadata/``), which is
#: rebuilt with ``s3://`` hrefs and uploaded last.
PUBLISHED: tuple[str, ...] = tuple(f for a in ARTIFACTS if a.stage != "stac" for f in a.files)


def publish_run(run_dir: Path, base_uri: str, model_name: str, version: str | None = None) -> dict[str, str]:
    """Upload the run's artifacts below ``base_uri`` (``s3://bucket/prefix/<model>/<version>/``).

    With the registered ``version``, the Esri package is re-made so that its ``.emd`` ``Version``
    says it. The STAC item is rebuilt with ``s3://`` hrefs, validated, and uploaded last, so a
    reader never finds an item whose assets are not all there yet.

    Returns:
        ``{"base_uri": ..., "stac_item": <uri of the item>}``.
    """
    from components.stages.dlpk import package_dlpk
    from components.stages.stac import build_stac_item

    layout = RunLayout(Path(run_dir))
    base = base_uri if base_uri.endswith("/") else base_uri + "/"
    with tempfile.TemporaryDirectory(prefix="campseg-publish-") as tmp:
        staged = Path(tmp) / "run"
        with open_output(staged, "publish"):  # a new run folder of its own, marked for the STAC stage
            pass
        for entry in PUBLISHED:
            source = layout.root / entry
            if entry.endswith("/"):
                shutil.copytree(source, staged / entry)
            elif source.exists():
                shutil.copy2(source, staged / entry)
        if version is not None and any((staged / "esri").glob("*.dlpk")):
            package_dlpk(staged, model_name, version=str(version))
        (staged / "metadata").mkdir()
        stac_options = _stac_options(layout)
        item = build_stac_item(staged, model_name, asset_base=base, **stac_options)
        summary = staged / "summary.json"
        summary.unlink(missing_ok=True)  # the local summary names local paths
        item_file = item.rename(Path(tmp) / "stac_item.json")  # the rest of metadata/ (its code) goes up
        (staged / MARKER).unlink()  # the staging folder's own marker is not the run's
        upload_dir(staged, base)
        item_uri = upload_file(item_file, join_uri(base, "metadata/stac_item.json"))
    return {"base_uri": base, "stac_item": item_uri}


def _stac_options(layout: RunLayout) -> dict:
    """The license, providers, images and imagery period of the run's own STAC item, kept when rebuilt."""
    import json

    try:
        props = json.loads(layout.stac_item.read_text())["properties"]
        assets = json.loads(layout.stac_item.read_text())["assets"]
    except (OSError, ValueError, KeyError):
        return {}
    providers = [p for p in props.get("providers", []) if p.get("name") != "campseg"]
    images = {k.removeprefix("container-"): a["href"] for k, a in assets.items() if k.startswith("container-")}
    imagery = (props["start_datetime"], props["end_datetime"]) if props.get("start_datetime") else None
    return {"license": props.get("license", "other"), "providers": providers, "images": images,
            "imagery": imagery}
