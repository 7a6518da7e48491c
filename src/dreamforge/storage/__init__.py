"""Artifact stores: where image bytes live and how clients fetch them (local disk, S3)."""
