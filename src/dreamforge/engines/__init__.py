"""Engines: provider adapters that turn a recipe into pixels (SDXL on diffusers)."""
