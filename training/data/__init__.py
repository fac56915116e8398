"""The dataset: folder layouts, de-duplication, leakage-free splits, arrays for fitting."""
