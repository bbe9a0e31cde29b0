"""Data: IDX files, image folders and image files, the named data sets (found or downloaded
and verified), and the splits on the device with their batches and binarization.

May import: base.
"""
