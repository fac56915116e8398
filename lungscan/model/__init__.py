"""The model chain: the not-CT gate, preprocessing, the runtime, calibration, conformal sets, the heatmap."""
