"""Release: the runtime twin of model.h5, and publishing to the S3 registry."""
