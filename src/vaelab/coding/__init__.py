"""Coding: lossless compression with a trained VAE, bits-back ANS on the ``constriction``
entropy coder (:mod:`.bitsback`), the batches (:mod:`.compress`) and the file (:mod:`.container`).

May import: base, models.
"""
