"""segtrain: segmentation training for tiny targets, with every imbalance loss and honest metrics."""

__version__ = "0.1.0"
