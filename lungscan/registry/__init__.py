"""The S3 model registry: versioned bundles, the latest pointer, and the store that serves from it."""
