"""SPG: Sparse-Projected Guides for zero-shot anomaly detection and segmentation."""

__version__ = "0.1.0"
