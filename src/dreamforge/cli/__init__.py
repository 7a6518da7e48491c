"""The `dreamforge` command line (Typer + Rich)."""
