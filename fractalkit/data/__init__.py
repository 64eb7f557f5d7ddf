"""Data helpers: natural-image crops for quick training runs, tiny enumerable spaces for tests,
and public datasets by name on the Hugging Face Hub (:mod:`fractalkit.data.hub_datasets`).

Nothing downloads at import; optional dependencies (scikit-image, datasets) are imported when
first used.
"""

from fractalkit.data.natural import PHOTOS, natural_image_crops
from fractalkit.data.toy import all_configurations, configuration_index, num_configurations

__all__ = [
    "PHOTOS",
    "all_configurations",
    "configuration_index",
    "natural_image_crops",
    "num_configurations",
]
