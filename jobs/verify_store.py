"""python -m jobs.verify_store STORE: check every shard of a store against its manifest.

Reads each shard's bytes (sha256 and size as the manifest records them), decodes it and checks
its layout, and checks the saved tokenizer. Prints one line per damaged file, naming it.
Exit status: 0 sound, 1 damaged (re-dump, or rerun the dump after deleting the named shards and
the manifest to rewrite only those), 2 not a readable store.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.verify_store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("store", help="the store: a directory, or an s3://, gs:// or az:// URI")
    args = parser.parse_args(argv)

    from logitstore import StoreError, StoreReader

    start = time.perf_counter()
    try:
        reader = StoreReader(args.store)
    except StoreError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    problems = reader.verify()
    for problem in problems:
        print(f"damaged: {problem}")
    m = reader.manifest
    verdict = f"{len(problems)} damaged" if problems else "all sound"
    print(
        f"{args.store}: {len(m.shards)} shards, {m.num_samples} samples, {m.num_bytes} bytes checked in "
        f"{time.perf_counter() - start:.1f} s: {verdict}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
