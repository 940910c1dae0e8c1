"""External standards: the STAC item's MLM fields and assets, offline STAC schema validation (vendored
schemas) and the Esri raster function."""

from pathlib import Path

#: The Python raster function shipped in every DLPK (standalone: numpy, json, os, torch only).
ESRI_RASTER_FUNCTION = Path(__file__).resolve().with_name("esri") / "CampSegmenter.py"
#: The standalone pre/post-processing module shipped beside every STAC item (numpy only).
PROCESSING_CODE = Path(__file__).resolve().parent / "model_code" / "campseg_processing.py"
