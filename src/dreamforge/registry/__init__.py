"""The model registry: installed checkpoints, their hashes and their files on disk."""
