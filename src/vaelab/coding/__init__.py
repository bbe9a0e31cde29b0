"""Coding: lossless compression with a trained VAE, bits-back with K importance samples on
constriction's ANS stack (latents, pixels, particles, bitsback, compress, container).

May import: base, models.
"""
