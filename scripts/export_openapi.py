"""Write the API's OpenAPI document (`make openapi`); a test fails when the committed copy is stale."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreamforge.api.app import create_app
from dreamforge.config import Settings


def render() -> str:
    """The OpenAPI document as stable, pretty JSON."""
    # The contract documents the default (embedded) topology, whose API also serves `/v1/files`,
    # whatever DF_* settings the shell that runs this has.
    app = create_app(Settings(_env_file=None, minio_endpoint=""))
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Parse `--out` and write the document there."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/openapi/openapi.v1.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
