"""Data helpers: natural-image crops for quick training runs and tiny enumerable spaces for tests.

Nothing here downloads; optional dependencies (scikit-image) are imported when first used.
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
