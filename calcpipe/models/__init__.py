"""Segmentation models: the paper's U-Net, pre-processing, checkpoints and segmenters.

Importing this package does not import torch; the modules that need it import it lazily
or at their own import.
"""
