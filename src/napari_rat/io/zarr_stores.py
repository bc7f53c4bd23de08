"""Opening zarr stores from local paths, ``http(s)://`` and ``s3://`` URLs (read-only).

Remote stores go through fsspec (``FsspecStore``), with a timeout on every request. S3 is
anonymous unless credentials are found the usual way (environment variables, a profile, the
AWS config files), in which case s3fs picks them up itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_rat.io.errors import OmeZarrError, RemoteAccessError

REMOTE_SCHEMES = ("http://", "https://", "s3://")
DEFAULT_TIMEOUT = 30.0


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is a URL this package reads remotely."""
    return str(uri).lower().startswith(REMOTE_SCHEMES)


def _has_aws_credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    home = Path.home()
    cred_file = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials")
    return Path(cred_file).is_file()


def remote_storage_options(uri: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Default fsspec options for ``uri``: timeouts, and anonymous S3 without credentials."""
    if uri.lower().startswith("s3://"):
        opts: dict[str, Any] = {
            "config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout}
        }
        if not _has_aws_credentials():
            opts["anon"] = True
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout)}}


def open_store(
    uri: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """A read-only zarr store for a local path or a remote URL.

    Parameters
    ----------
    uri
        Local path, ``http(s)://`` or ``s3://`` URL.
    storage_options
        fsspec options for remote URLs; merged over the defaults (timeouts, anonymous S3).
    timeout
        Seconds allowed per remote request.

    Raises
    ------
    OmeZarrError
        For a local path that does not exist, or a missing optional dependency (s3fs).
    """
    from zarr.storage import FsspecStore, LocalStore

    text = str(uri)
    if is_remote(text):
        opts = remote_storage_options(text, timeout)
        opts.update(storage_options or {})
        try:
            return FsspecStore.from_url(text.rstrip("/"), storage_options=opts, read_only=True)
        except ImportError as exc:
            raise OmeZarrError(
                text, f"cannot read this URL: {exc}", 'install s3fs: pip install "napari-rat[s3]"'
            ) from None
        except (OSError, ValueError) as exc:
            raise RemoteAccessError(text, f"cannot open the remote store: {exc}") from None
    path = Path(text).expanduser()
    if not path.exists():
        raise OmeZarrError(text, "no such file or directory", "check the path")
    if not path.is_dir():
        raise OmeZarrError(
            text,
            "not a zarr store (a zarr store is a directory)",
            "convert the file first: napari-rat convert IN OUT.zarr",
        )
    return LocalStore(path, read_only=True)


def describe_remote_error(uri: str, exc: BaseException, timeout: float) -> RemoteAccessError:
    """A :class:`RemoteAccessError` with a clear message for a failed remote request."""
    import asyncio

    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return RemoteAccessError(
            uri,
            f"the server did not answer within {timeout:g} s",
            "check the URL and your connection, or pass a longer timeout",
        )
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if status:
        return RemoteAccessError(uri, f"HTTP {status} from the server", "check the URL")
    return RemoteAccessError(
        uri, f"cannot read the remote store: {type(exc).__name__}: {exc}", "check the URL"
    )
