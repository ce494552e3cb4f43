"""The one rule for "is this the same dump?": two dumps are the same when their identities are equal.

An identity is a JSON object of everything that decides a store's bytes: the layout, the teacher's
weights fingerprint, the dataset's fingerprint, the tokenizer, and the arguments of the job that
shape the content. The writer keeps it in `.pending.json` while a dump is unfinished (a rerun with
an equal identity resumes it) and its sha256 in the manifest's `content_sha256` once committed (a
rerun with an equal identity finds the store complete). A job may apply the same rule early to the
part of the identity it knows before any compute (its arguments).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(identity))


def content_sha256(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(canonical(identity), sort_keys=True).encode()).hexdigest()


def differences(recorded: dict[str, Any], mine: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (one level into nested objects names the cause well enough)."""
    recorded, mine = canonical(recorded), canonical(mine)
    out = []
    for key in sorted(set(recorded) | set(mine)):
        a, b = recorded.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and not prefix:
            out += differences(a, b, f"{key}.")
        elif a != b:
            out.append(prefix + key)
    return out
