"""The not-CT gate, fitted on CT from every bundle and generated non-CT images."""
