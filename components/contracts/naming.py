"""Names the pipeline accepts: the model name is also the STAC item's ``mlm:name``."""

from __future__ import annotations

import re

from components.contracts.errors import ParameterError

#: The MLM extension's pattern for ``mlm:name``.
MODEL_NAME_PATTERN = re.compile(r"[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]")


def check_model_name(model_name: str) -> None:
    """Raise ParameterError unless ``model_name`` is a valid ``mlm:name`` (MLM's pattern)."""
    if not MODEL_NAME_PATTERN.fullmatch(model_name):
        raise ParameterError(
            f"model_name={model_name!r}: use at least 3 letters, digits, '_', '.', '-' or spaces, "
            "starting with a letter and ending with a letter or digit"
        )
