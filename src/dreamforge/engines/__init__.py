"""Engines: provider adapters that turn a recipe into pixels (SDXL on diffusers)."""

import os

# Set here, before any engine imports torch: torch's OpenMP threads otherwise spin while they wait
# for work, and on a box whose cores the API, another worker or any neighbour also wants, a render
# then ran 3-30x slower (bench/batch_gain.py). A user's own OMP_WAIT_POLICY still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
