"""File storage behind one small interface (`Storage`): local filesystem or S3-compatible.

Backends hold sealed bytes only; sealing lives with the crypto helpers (core/filecrypt.py).
Besides the backends, this package holds the file handling the media stage needs: content
sniffing against the allow-list (`sniff`) and the Pillow pipeline (`imaging`).
"""

from __future__ import annotations

from core.config import Settings
from storage.base import ObjectMissing, Storage, StorageUnavailable, check_key

__all__ = ["ObjectMissing", "Storage", "StorageUnavailable", "check_key", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """The backend `PARLEY_STORAGE` names (`local`, the default, or `s3`)."""
    if settings.storage == "s3":
        from storage.s3 import S3Storage

        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    if settings.storage != "local":
        raise RuntimeError(f"PARLEY_STORAGE must be 'local' or 's3', not {settings.storage!r}")
    from storage.local import LocalStorage

    return LocalStorage(settings.data_dir / "files")
