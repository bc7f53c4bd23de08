"""Errors raised by :mod:`napari_rat.io`.

Every message names the file (or URL) and says how to fix the problem, so front ends (CLI,
widgets) can show ``str(error)`` as is, without a traceback.
"""

from __future__ import annotations


class OmeZarrError(ValueError):
    """An OME-Zarr that cannot be read or written, with a message naming the file and the fix.

    Parameters
    ----------
    uri
        The path or URL concerned.
    problem
        What is wrong.
    fix
        What the user can do about it (optional).
    """

    def __init__(self, uri: str, problem: str, fix: str | None = None) -> None:
        self.uri = str(uri)
        self.problem = problem
        self.fix = fix
        message = f"{self.uri}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class RemoteAccessError(OmeZarrError):
    """A remote store that could not be reached: timeout, HTTP error, refused connection."""


class OmeZarrWarning(UserWarning):
    """Metadata that breaks the spec in a way this package can still read (e.g. a label image
    written by another tool without ``dimension_names``)."""


class NapariWriteError(OSError):
    """A save from napari that was refused, with the :class:`OmeZarrError`'s message.

    napari takes a ``ValueError`` raised by a writer to mean "not my format", tries no other
    writer and only warns that the plugin "is not a valid writer", so the reason would be lost;
    an ``OSError`` reaches the user (napari's File > Save shows it as an error notification,
    ``viewer.layers.save`` raises it).
    """
