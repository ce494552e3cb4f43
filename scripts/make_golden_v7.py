"""Write the version-7 golden stores of tests/data/golden/ (stores written to object storage).

    python -m scripts.make_golden_v7 OUT_DIR

Run ONCE, by the code that introduced format version 7; never regenerate them to make a failing
test pass. Each store is dumped through the command line to moto's S3 server (started here, on
127.0.0.1) from the same tiny random Llama, chat and text rows as scripts/make_golden_v5.py, then
every object under its prefix is copied to OUT_DIR/<name>/ under the same name: a local copy of a
store on object storage is a valid store (FORMAT.md, "Stores on object storage"), and the reader
must keep reading its attempt-tagged shard names and ignore the markers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.kill_resume import start_s3_server
from scripts.make_golden_stores import pin
from scripts.make_golden_v5 import CHAT, TEXT, expected

BUCKET = "golden"
STORES = {
    "v7-s3-chat-delta-logq8-arrow": [
        "--dataset", "chat.jsonl", "--format", "arrow", "--index-codec", "delta", "--value-codec", "logq",
    ],
    "v7-s3-text-zarr": ["--dataset", "text.jsonl", "--seq-len", "16"],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from logitstore.storage import open_storage
    from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl

    out = Path((argv or sys.argv[1:])[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start_s3_server(f"s3://{BUCKET}")
    work = Path(tempfile.mkdtemp(prefix="golden-"))
    tok = tiny_chat_tokenizer(work / "teacher")
    tiny_llama(work / "teacher", len(tok), max_positions=64)
    write_jsonl(work / "chat.jsonl", CHAT)
    write_jsonl(work / "text.jsonl", TEXT)
    common = ["--teacher", f"hf:{work / 'teacher'}", "--top-k", "4", "--shard-size", "3", "--threads-per-worker", "1"]
    for name, args in STORES.items():
        uri = f"s3://{BUCKET}/{name}"
        cmd = [sys.executable, "-m", "jobs.dump_logits", *common, *args, "--out", uri]
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
        store, location = out / name, open_storage(uri)
        shutil.rmtree(store, ignore_errors=True)
        for key in location.list():
            (store / key).parent.mkdir(parents=True, exist_ok=True)
            (store / key).write_bytes(location.get(key))
        pin(store, expected(store))
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
