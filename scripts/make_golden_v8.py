"""Write the version-8 golden store of tests/data/golden/ (Zarr shards on object storage as ZIPs).

    python -m scripts.make_golden_v8 OUT_DIR

Run ONCE, by the code that introduced format version 8; never regenerate it to make a failing
test pass. As scripts/make_golden_v7.py: dumped through the command line to moto's S3 server
(started here, on 127.0.0.1) from the same tiny random Llama and chat rows, then every object
under its prefix is copied to OUT_DIR/<name>/ under the same name. The reader must keep reading
its `.zarr.zip` shards, on object storage and from a local copy.
"""

from __future__ import annotations

import sys

from scripts import make_golden_v7

STORES = {
    "v8-s3-chat-zarr-zip": ["--dataset", "chat.jsonl", "--format", "zarr", "--index-codec", "delta"],
}


def main(argv: list[str] | None = None) -> int:
    make_golden_v7.STORES = STORES
    make_golden_v7.BUCKET = "golden8"
    return make_golden_v7.main(argv or sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
