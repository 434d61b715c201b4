"""Inference: loading a trained run and embedding images with it.

* :mod:`cleanface.inference.weights`: safe reading of weight files (no pickled code, CRCs checked);
* :mod:`cleanface.inference.run`: :func:`load_run` and what else is read from a run directory;
* :mod:`cleanface.inference.embed`: flip-fused, batched, resumable embedding of arrays and datasets;
* :mod:`cleanface.inference.stored`: reading an embeddings file back (no torch needed).

Evaluation, purification, inversion and training use this package; it uses only models,
losses and data.
"""
