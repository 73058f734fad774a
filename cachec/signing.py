"""Artifact signatures: an HMAC-SHA256 of ``manifest.json`` under a key shared by who compiles
and who loads.

Why this is enough: the manifest lists every file of the artifact with its size and SHA-256,
and a load checks each file against it, so a valid MAC over the manifest's exact bytes vouches
for every byte the artifact holds. Why a MAC and a shared key (standard library only): the
checksums alone protect against corruption, not against someone who can write the artifact's
folder (they rewrite the checksums too); without the key they cannot produce a matching MAC.

The signature is ``manifest.sig`` next to the manifest (hex digest, one line), written by
``cachec compile --sign-key FILE``. A load verifies it when given a key: ``--verify-key FILE``,
``cachec.load(..., verify_key=FILE or bytes)``, or the environment variable
``CACHEC_VERIFY_KEY=FILE`` when neither is given. A key file holds the key itself (any bytes,
at least ``MIN_KEY_BYTES`` once surrounding whitespace is stripped), e.g.
``python -c "import secrets; print(secrets.token_hex(32))" > key``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from .errors import ArtifactError

SIGNATURE_FILE = "manifest.sig"
KEY_ENV = "CACHEC_VERIFY_KEY"
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 1 << 16


def read_key(source, flag: str = "--verify-key") -> bytes:
    """The key from ``source``: bytes are the key; a str or path names a key file."""
    if isinstance(source, (bytes, bytearray)):
        key = bytes(source).strip()
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if path.stat().st_size > MAX_KEY_BYTES:
                raise ArtifactError(f"{flag} {path}: {path.stat().st_size} bytes, too large for a key file "
                                    f"(at most {MAX_KEY_BYTES})")
            key = path.read_bytes().strip()
        except OSError as exc:
            raise ArtifactError(f"{flag} {path}: cannot read the key file ({exc.strerror or exc})") from None
    else:
        raise ArtifactError(f"{flag}: give a key file path or the key as bytes; got {type(source).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ArtifactError(f"{flag}: the key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                            "(e.g. python -c \"import secrets; print(secrets.token_hex(32))\" > KEY)")
    return key


def key_from_env() -> bytes | None:
    """The verify key named by ``CACHEC_VERIFY_KEY`` (a key file), or None when it is unset."""
    source = os.environ.get(KEY_ENV)
    return read_key(source, KEY_ENV) if source else None


def signature(manifest_bytes: bytes, key: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def sign(artifact_dir: Path, key: bytes) -> None:
    """Write ``manifest.sig`` for the manifest as it is on disk."""
    artifact_dir = Path(artifact_dir)
    mac = signature((artifact_dir / "manifest.json").read_bytes(), key)
    (artifact_dir / SIGNATURE_FILE).write_text(mac + "\n")


def is_signed(artifact_dir: Path) -> bool:
    return (Path(artifact_dir) / SIGNATURE_FILE).is_file()


def verify(artifact_dir: Path, manifest_bytes: bytes, key: bytes) -> None:
    """Refuse unless ``manifest.sig`` is the MAC of exactly ``manifest_bytes`` under ``key``."""
    sig = Path(artifact_dir) / SIGNATURE_FILE
    if sig.is_symlink() or not sig.is_file():
        raise ArtifactError(f"{artifact_dir} is not signed (no {SIGNATURE_FILE}) but a verify key was given: "
                            "sign it when compiling (cachec compile --sign-key FILE), or load it without a key")
    try:
        got = sig.read_bytes()[:200].decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        got = ""
    if not hmac.compare_digest(got, signature(manifest_bytes, key)):
        raise ArtifactError(f"{sig} does not match the manifest under the given key: the artifact was edited after "
                            "signing, or signed with another key; recompile and sign it, or use the key it was "
                            "signed with")
