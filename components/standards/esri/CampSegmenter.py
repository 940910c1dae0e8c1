"""CampSegmenter: the Python raster function shipped inside the camp-segmentation .dlpk.

ArcGIS Pro's "Classify Pixels Using Deep Learning" tool loads this file because the package's
Esri model definition (.emd) names it in ``InferenceFunction``. It follows Esri's contract for
custom deep learning raster functions (Esri/raster-deep-learning,
docs/writing_deep_learning_python_raster_functions.md and the ImageClassifier templates):
``initialize`` -> ``getParameterInfo`` -> ``getConfiguration`` -> ``updateRasterInfo`` ->
``updatePixels`` per pixel block.

Everything the model needs is read from the .emd, which the packaging stage wrote from the run's
``stats.json``: tile size (``ImageHeight``/``ImageWidth``), band order (``ExtractBands``), scaling
(``Preprocessing``: ``(raw - mean*max_value) / (std*max_value)`` per band, raw as stored, e.g.
0-255), the decision threshold (``Threshold``, ``probability >= threshold`` -> camp) and whether
the model emits probabilities or logits (``ModelOutput``). Nothing is restated here.

The pixel type the model was trained on (``Preprocessing.dtype``, e.g. uint8) is enforced: an
integer raster of another type (uint16 for a uint8 model, say) is refused rather than predicted as
garbage, and float pixels are taken only when every value is exactly a value of the trained type
(a uint8 raster handed over as float). ``Preprocessing.nodata``, when set, marks pixels whose bands
all equal it as no data: they enter the model as 0 (the training mean) and come out as 0.

Standalone on purpose: it imports only the standard library, numpy and torch, never the project's
``components`` package, so it runs in ArcGIS Pro's deep learning Python environment.
"""

import json
import os

import numpy as np
import torch


class CampSegmenter:
    """Pixel classification (camp = 1, background = 0) with a TorchScript model."""

    def __init__(self):
        self.name = "Camp Segmenter"
        self.description = (
            "Classifies each pixel as refugee camp (1) or background (0) with a TorchScript U-Net "
            "whose preprocessing and threshold come from the Esri model definition."
        )
        self.json_info = {}
        self.model_path = None
        self.model = None
        self.device = "cpu"
        self.padding = 0
        self.batch_size = 1
        self.threshold = 0.5

    # ------------------------------------------------------------------ Esri contract
    def initialize(self, **kwargs):
        """Read the .emd (a file path or the JSON text itself); the model loads lazily."""
        if "model" not in kwargs:
            return
        model = kwargs["model"]
        model_as_file = True
        try:
            with open(model, "r") as f:
                self.json_info = json.load(f)
        except (FileNotFoundError, OSError, TypeError, ValueError):
            try:
                self.json_info = json.loads(model)
                model_as_file = False
            except (TypeError, ValueError):
                raise Exception("Invalid model argument: neither an .emd file nor its JSON text")

        names = [c["Name"] for c in self.json_info.get("Classes", []) if int(c.get("Value", 0)) == 1]
        if names:
            self.description = (
                "Classifies each pixel as {} (1) or background (0) with a TorchScript model whose "
                "preprocessing and threshold come from the Esri model definition.".format(names[0])
            )

        model_path = self.json_info["ModelFile"]
        if not os.path.isabs(model_path):
            base = os.path.dirname(os.path.abspath(model)) if model_as_file else os.path.dirname(
                os.path.abspath(__file__)
            )
            model_path = os.path.abspath(os.path.join(base, model_path))
        self.model_path = model_path
        self.model = None

        preprocessing = self.json_info["Preprocessing"]
        max_value = float(preprocessing["max_value"])
        # Same arithmetic as the training project's Preprocessing.normalize: the raw-scale
        # constants are computed in float64 and applied in float32.
        self._raw_mean = (np.asarray(preprocessing["mean"], dtype=np.float64) * max_value).astype(
            np.float32
        ).reshape(-1, 1, 1)
        self._raw_std = (np.asarray(preprocessing["std"], dtype=np.float64) * max_value).astype(
            np.float32
        ).reshape(-1, 1, 1)
        self.threshold = float(self.json_info.get("Threshold", preprocessing.get("threshold", 0.5)))
        self.dtype = np.dtype(preprocessing.get("dtype") or ("uint8" if max_value == 255.0 else "float32"))
        nodata = preprocessing.get("nodata")
        self.nodata = None if nodata is None else float(nodata)
        self.batch_size = int(self.json_info.get("BatchSize", 1))
        self.padding = int(self.json_info.get("ModelPadding", 0))
        if "device" in kwargs:
            self._set_device(kwargs["device"])

    def getParameterInfo(self):
        """The tool's parameters: raster and model (mandatory), then device and our options."""
        return [
            {
                "name": "raster",
                "dataType": "raster",
                "required": True,
                "displayName": "Raster",
                "description": "Input Raster",
            },
            {
                "name": "model",
                "dataType": "string",
                "required": True,
                "displayName": "Input Model Definition (EMD) File",
                "description": "Input model definition (EMD) JSON file",
            },
            {
                "name": "device",
                "dataType": "numeric",
                "required": False,
                "displayName": "Device ID",
                "description": "GPU id; -1 or no GPU runs on the CPU",
            },
            {
                "name": "padding",
                "dataType": "numeric",
                "value": int(self.json_info.get("ModelPadding", 0)),
                "required": False,
                "displayName": "Padding",
                "description": "Pixels of context on each side of a tile that are predicted but "
                "discarded (reduces seams between tiles)",
            },
            {
                "name": "batch_size",
                "dataType": "numeric",
                "value": int(self.json_info.get("BatchSize", 1)),
                "required": False,
                "displayName": "Batch Size",
                "description": "Tiles per model call",
            },
            {
                "name": "threshold",
                "dataType": "numeric",
                "value": float(self.json_info.get("Threshold", 0.5)),
                "required": False,
                "displayName": "Threshold",
                "description": "Camp where the model's camp probability is >= threshold",
            },
        ]

    def getConfiguration(self, **scalars):
        """Bands, padding and the block size ArcGIS should deliver (tx/ty + 2*padding)."""
        if scalars.get("padding") not in (None, ""):
            self.padding = int(scalars["padding"])
        if scalars.get("batch_size") not in (None, ""):
            self.batch_size = max(1, int(scalars["batch_size"]))
        if scalars.get("threshold") not in (None, ""):
            self.threshold = float(scalars["threshold"])
        if scalars.get("device") not in (None, ""):
            self._set_device(scalars["device"])

        height, width = int(self.json_info["ImageHeight"]), int(self.json_info["ImageWidth"])
        if not 0 <= 2 * self.padding < min(height, width):
            raise Exception(
                "padding={}: must be >= 0 and leave a tile interior (ImageHeight={}, ImageWidth={})".format(
                    self.padding, height, width
                )
            )
        self.rectangle_height, self.rectangle_width = _rectangle_from_batch_size(self.batch_size)
        configuration = {
            "extractBands": tuple(self.json_info["ExtractBands"]),
            "padding": self.padding,
            "batch_size": self.batch_size,
            "tx": (width - 2 * self.padding) * self.rectangle_width,
            "ty": (height - 2 * self.padding) * self.rectangle_height,
            "fixedTileSize": 1,
            "inheritProperties": 2 | 4 | 8,
            "inputMask": True,
        }
        if "DataRange" in self.json_info:
            configuration["dataRange"] = tuple(self.json_info["DataRange"])
        return configuration

    def updateRasterInfo(self, **kwargs):
        """One unsigned 8-bit band of class values, with the classes' attribute table.

        An input raster whose integer pixel type differs from the trained one is refused here.
        """
        raster_info = kwargs.get("raster_info") or {}
        pixel_type = _PIXEL_TYPES.get(str(raster_info.get("pixelType", "")).lower())
        if pixel_type is not None and np.issubdtype(pixel_type, np.integer) and pixel_type != self.dtype:
            raise Exception(self._type_message(pixel_type))
        classes = self.json_info.get("Classes", [])
        values = [0] + [int(c["Value"]) for c in classes]
        info = kwargs["output_info"]
        info["bandCount"] = 1
        info["pixelType"] = "u1"
        info["statistics"] = ({"minimum": float(min(values)), "maximum": float(max(values))},)
        info["histogram"] = ()
        info["rasterAttributeTable"] = json.dumps(_attribute_table(classes))
        return kwargs

    def updatePixels(self, tlc, shape, props, **pixelBlocks):
        """Classify one pixel block: ``output_pixels`` uint8 (1, rows, cols), 0/1."""
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        self._check_pixel_type(pixels)
        bands, in_rows, in_cols = pixels.shape
        p = int(self.padding)
        if shape is not None and len(shape) >= 2:
            out_rows, out_cols = int(shape[-2]), int(shape[-1])
        else:
            out_rows, out_cols = in_rows - 2 * p, in_cols - 2 * p
        if (in_rows, in_cols) == (out_rows, out_cols):
            p_in = 0  # ArcGIS handed the block without the padding ring
        else:
            p_in = p

        probabilities = self._predict_block(pixels)
        probabilities = probabilities[p_in : p_in + out_rows, p_in : p_in + out_cols]
        classes = (probabilities >= self.threshold).astype(np.uint8)
        nodata = self._nodata_pixels(pixels)
        if nodata is not None:
            classes[nodata[p_in : p_in + out_rows, p_in : p_in + out_cols]] = 0

        mask = pixelBlocks.get("raster_mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim == 2:
                mask = mask[np.newaxis]
            valid = np.all(mask != 0, axis=0)[p_in : p_in + out_rows, p_in : p_in + out_cols]
            classes[~valid] = 0

        pixelBlocks["output_pixels"] = classes[np.newaxis].astype(np.uint8, copy=False)
        return pixelBlocks

    # ------------------------------------------------------------------ helpers
    def _set_device(self, device):
        try:
            device = int(device)
        except (TypeError, ValueError):
            device = -1
        if device >= 0 and torch.cuda.is_available():
            self.device = "cuda:{}".format(device)
        else:
            self.device = "cpu"
        if self.model is not None:
            self.model = self.model.to(self.device)

    def _load_model(self):
        if self.model is None:
            if not self.model_path or not os.path.exists(self.model_path):
                raise Exception("model file not found: {}".format(self.model_path))
            model = torch.jit.load(self.model_path, map_location="cpu")
            model.eval()
            self.model = model.to(self.device)
        return self.model

    def _type_message(self, got):
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            trained = "{} pixels ({}-{})".format(self.dtype.name, info.min, info.max)
        else:
            trained = "{} pixels".format(self.dtype.name)
        return (
            "CampSegmenter: the model was trained on {} but the raster delivers {} pixels; its "
            "predictions would be meaningless. Use a raster of the trained pixel type (for example "
            "Copy Raster with that pixel type and scaling).".format(trained, np.dtype(got).name)
        )

    def _check_pixel_type(self, pixels):
        """Refuse a block whose pixels are not values of the trained pixel type."""
        got = pixels.dtype
        if got == self.dtype:
            return
        if np.issubdtype(self.dtype, np.floating) and np.issubdtype(got, np.floating):
            return
        if np.issubdtype(self.dtype, np.integer) and np.issubdtype(got, np.floating):
            info = np.iinfo(self.dtype)
            values = pixels[np.isfinite(pixels)]
            if values.size == 0 or (
                values.min() >= info.min and values.max() <= info.max and np.all(values == np.round(values))
            ):
                return  # the trained type's values, handed over as float
        raise Exception(self._type_message(got))

    def _nodata_pixels(self, raw):
        """(H, W) bool: pixels whose bands all equal the nodata value, or that are not finite."""
        raw = np.asarray(raw)
        bad = None
        if self.nodata is not None:
            hit = np.isnan(raw) if np.isnan(self.nodata) else raw == self.nodata
            bad = hit.all(axis=-3)
        if np.issubdtype(raw.dtype, np.floating):
            finite = np.isfinite(raw).all(axis=-3)
            bad = ~finite if bad is None else bad | ~finite
        return bad

    def _normalize(self, raw):
        """``(raw - mean*max_value) / (std*max_value)`` per band, float32; no data -> 0."""
        invalid = self._nodata_pixels(raw)
        raw = np.asarray(raw, dtype=np.float32)
        if invalid is None:
            return ((raw - self._raw_mean) / self._raw_std).astype(np.float32)
        with np.errstate(invalid="ignore"):
            out = ((raw - self._raw_mean) / self._raw_std).astype(np.float32)
        return np.where(invalid[np.newaxis], np.float32(0), out).astype(np.float32)

    def _infer(self, batch):
        """Probabilities (B, H, W) for normalised tiles (B, C, H, W)."""
        model = self._load_model()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            out = model(x)
            if str(self.json_info.get("ModelOutput", "probabilities")).lower() == "logits":
                out = torch.sigmoid(out)
        return out[:, 0].float().cpu().numpy()

    def _predict_block(self, pixels):
        """Camp probability for every pixel of a block of any size.

        The block is cut into model-size tiles that overlap by 2*padding; each tile contributes
        its interior (the full tile at the block's edges). Tiles at the right and bottom end are
        shifted back to end at the block's edge rather than filled with zeros, so a block of
        exactly one model tile is predicted exactly as the evaluation stage predicts a chip.
        Blocks smaller than a tile are zero-padded at the bottom/right.
        """
        height, width = int(self.json_info["ImageHeight"]), int(self.json_info["ImageWidth"])
        p = int(self.padding)
        bands, rows, cols = pixels.shape
        pad_rows, pad_cols = max(0, height - rows), max(0, width - cols)
        normalized = self._normalize(pixels)
        if pad_rows or pad_cols:
            normalized = np.pad(normalized, ((0, 0), (0, pad_rows), (0, pad_cols)))
        full_rows, full_cols = normalized.shape[1:]
        ys = _tile_origins(full_rows, height, p)
        xs = _tile_origins(full_cols, width, p)
        origins = [(y, x) for y in ys for x in xs]

        result = np.zeros((full_rows, full_cols), dtype=np.float32)
        for start in range(0, len(origins), self.batch_size):
            chunk = origins[start : start + self.batch_size]
            batch = np.stack([normalized[:, y : y + height, x : x + width] for y, x in chunk])
            probabilities = self._infer(batch)
            for (y, x), tile in zip(chunk, probabilities):
                top = 0 if y == 0 else p
                left = 0 if x == 0 else p
                bottom = height if y + height >= full_rows else height - p
                right = width if x + width >= full_cols else width - p
                result[y + top : y + bottom, x + left : x + right] = tile[top:bottom, left:right]
        return result[:rows, :cols]


#: Esri pixel types (``raster_info["pixelType"]``) as numpy types.
_PIXEL_TYPES = {
    "u1": np.dtype("uint8"), "u2": np.dtype("uint16"), "u4": np.dtype("uint32"),
    "i1": np.dtype("int8"), "i2": np.dtype("int16"), "i4": np.dtype("int32"),
    "f4": np.dtype("float32"), "f8": np.dtype("float64"),
}


def _tile_origins(length, tile, padding):
    """Start offsets of tiles of size ``tile`` whose interiors (``tile - 2*padding``) cover ``length``."""
    step = tile - 2 * padding
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, step))
    origins.append(length - tile)
    return origins


def _rectangle_from_batch_size(batch_size):
    """Tiles vertically and horizontally for a super tile of ``batch_size`` tiles (Esri's rule)."""
    batch_height = int(batch_size**0.5 + 0.5)
    batch_width = int(batch_size / batch_height)
    if batch_height * batch_width > batch_size:
        if batch_height >= batch_width:
            batch_height -= 1
        else:
            batch_width -= 1
    if (batch_height + 1) * batch_width <= batch_size:
        batch_height += 1
    if (batch_width + 1) * batch_height <= batch_size:
        batch_width += 1
    if batch_height > batch_width:
        batch_height, batch_width = batch_width, batch_height
    if batch_height * batch_width != batch_size:
        return batch_size, 1
    return batch_height, batch_width


def _attribute_table(classes):
    fields = [
        ("OID", "esriFieldTypeOID"),
        ("Value", "esriFieldTypeInteger"),
        ("Class", "esriFieldTypeString"),
        ("Red", "esriFieldTypeInteger"),
        ("Green", "esriFieldTypeInteger"),
        ("Blue", "esriFieldTypeInteger"),
    ]
    return {
        "displayFieldName": "",
        "fieldAliases": {name: name for name, _ in fields},
        "fields": [{"name": name, "type": kind, "alias": name} for name, kind in fields],
        "features": [
            {
                "attributes": {
                    "OID": i + 1,
                    "Value": int(c["Value"]),
                    "Class": c["Name"],
                    "Red": int(c["Color"][0]),
                    "Green": int(c["Color"][1]),
                    "Blue": int(c["Color"][2]),
                }
            }
            for i, c in enumerate(classes)
        ],
    }
