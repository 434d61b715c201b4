"""Model inversion: images synthesised from embeddings and sub-centers under the BatchNorm prior.

:func:`invert` optimises images from noise so that their embeddings match target
vectors while their BatchNorm statistics match the network's running statistics
(:mod:`cleanface.inversion.bn_prior`); :func:`invert_identities` writes the images of
an identity's sub-centers (or of embedding rows) to a folder with ``inversion.json``.
"""

from cleanface.inversion.bn_prior import BNPrior, bn_distance, bn_layers
from cleanface.inversion.image_prior import ImagePrior
from cleanface.inversion.identities import invert_identities, safe_names, write_inversions
from cleanface.inversion.invert import InversionResult, embed_images, invert

__all__ = [
    "BNPrior", "bn_distance", "bn_layers", "ImagePrior", "InversionResult", "embed_images", "invert",
    "invert_identities", "safe_names", "write_inversions",
]
