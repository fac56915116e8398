"""Training command-line entry points: train, evaluate, publish. They import the core package, never the Lambda."""
