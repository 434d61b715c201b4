"""Datasets: the index, one module per format (reader and writer together), images, caches, synthetic faces, noise.

Importing the package registers every format's sample reader with
:mod:`cleanface.data.index`, so an index loaded from disk reads its samples whatever
module asked for it.
"""

from cleanface.data import recordio  # noqa: F401  (registers the RecordIO sample reader)
