"""What went wrong talking to object storage, in one line that names the cause and the fix.

obstore's exceptions carry no status code and no cause chain: besides the class, the only facts
are in the message, whose tail is the Rust error's Debug form ("status: 404", "kind: Connect",
"BadScheme", "<Code>NoSuchBucket</Code>"). Those names are what is matched here, most specific
first; the configuration (an http:// endpoint without AWS_ALLOW_HTTP) is checked from the
environment, as the client itself does.
"""

from __future__ import annotations

import os
import re

from logitstore.errors import StoreError

TRUTHY = {"1", "true", "yes", "on", "y"}
_STATUS = re.compile(r"non-2xx status code: (\d{3})|\bstatus: (\d{3})\b")
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_RETRIES = re.compile(r"after (\d+) retries")


class StoreUnreachableError(StoreError):
    """The object store did not answer (server down, wrong endpoint, no network)."""


class ObjectStoreRefusedError(StoreError):
    """The object store answered, and refused: no such bucket, access denied, an invalid name."""


class ObjectPreconditionError(StoreError):
    """A conditional write lost: the object exists (create-only) or changed (compare-and-swap)."""


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def endpoint(uri: str = "s3://") -> str:
    env = os.environ.get
    scheme = _scheme(uri)
    if scheme == "gs":
        return env("GOOGLE_BASE_URL") or "the GCS endpoint"
    if scheme in ("az", "abfs", "abfss"):
        return env("AZURE_STORAGE_ENDPOINT") or env("AZURE_ENDPOINT") or "the Azure endpoint"
    return env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL") or env("AWS_ENDPOINT") or "the default endpoint"


def allow_http() -> bool:
    return os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in TRUTHY


def http_without_allow(uri: str) -> bool:
    """An http:// S3 endpoint that the client will refuse (known before any request)."""
    return _scheme(uri) in ("s3", "s3a") and endpoint(uri).lower().startswith("http://") and not allow_http()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _clip(message: str) -> str:
    return message if len(message) <= 249 else message[:246] + "..."


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[-1].split("/", 1)[0]


def classify(exc: BaseException, uri: str, name: str) -> BaseException:
    """What a client error `exc` met on `uri`/`name` is: FileNotFoundError (no such object),
    ObjectPreconditionError (a conditional write lost), or a StoreError naming cause and fix."""
    from obstore.exceptions import (
        AlreadyExistsError,
        InvalidPathError,
        PermissionDeniedError,
        PreconditionError,
        UnauthenticatedError,
    )

    text, where, ep = str(exc), f"{uri}/{name}" if name else uri, endpoint(uri)
    match = _STATUS.search(text)
    status = int(match.group(1) or match.group(2)) if match else None
    notes = " ".join(getattr(exc, "__notes__", None) or [])
    bad_path = 'Path "' in text and ("segment" in text or "illegal" in text)
    if isinstance(exc, InvalidPathError) or (isinstance(exc, ValueError) and "'path'" in notes) or bad_path:
        return ObjectStoreRefusedError(_clip(f"{where!r} is not a valid object name: {first_line(exc)}"))
    if "NoSuchBucket" in text or (status == 404 and not isinstance(exc, (FileNotFoundError, PreconditionError))):
        return ObjectStoreRefusedError(
            _clip(f"bucket {_bucket(uri)} does not exist at {ep}: create it, or fix the URI")
        )
    if isinstance(exc, (AlreadyExistsError, PreconditionError)):
        return ObjectPreconditionError(f"{where} exists or changed")
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(where)
    if http_without_allow(uri) or "BadScheme" in text or "builder error" in text:
        return ObjectStoreRefusedError(_clip(f"the endpoint {ep} is plain http://: set AWS_ALLOW_HTTP=true"))
    if "169.254.169.254" in text or "token request" in text.lower():
        return ObjectStoreRefusedError(
            _clip(f"no credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or GOOGLE_/AZURE_ ones)")
        )
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403):
        code = _S3_CODE.search(text)
        why = f" ({code.group(1)})" if code else f" (HTTP {status})" if status else ""
        return ObjectStoreRefusedError(
            _clip(f"access denied to {where} at {ep}{why}: check the credentials (AWS_ACCESS_KEY_ID, ...)")
        )
    if "kind: Connect" in text or "kind: Timeout" in text or "error sending request" in text or "timed out" in text:
        why = (
            "connection refused" if "ConnectionRefused" in text
            else "host not found" if "dns error" in text
            else "timed out" if "imeout" in text
            else "no connection"
        )  # fmt: skip
        tries = _RETRIES.search(text)
        after = f", after {tries.group(1)} retries" if tries else ""
        return StoreUnreachableError(
            _clip(
                f"the object store at {ep} did not answer for {where} ({why}{after}): check that it is up and "
                "AWS_ENDPOINT_URL, then rerun the same command"
            )
        )
    if status and status >= 500:
        return StoreUnreachableError(_clip(f"the object store at {ep} failed (HTTP {status}) for {where}: retry later"))
    return StoreError(_clip(f"the object store at {ep} failed for {where}: {type(exc).__name__}: {first_line(exc)}"))
