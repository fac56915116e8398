"""Measuring a bundle as served: metrics, calibration and conformal sets, figures, the model card."""
