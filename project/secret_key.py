"""The secret key of a debug server started without `DJANGO_SECRET_KEY`: drawn once per
checkout and kept in a git-ignored file, so sign-ins survive a restart and every process
of the checkout (two `make run`s, a worker) signs and reads sessions alike.

Only the settings' debug branch calls this: production refuses to start without
`DJANGO_SECRET_KEY` and never reads the file.
"""

import logging
import os
import secrets
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger("project.settings")

KEY_FILE_EMPTY = "The secret key file {path} is empty: delete it and a new key is drawn."
KEY_FILE_UNWRITABLE = "Cannot store a secret key at %s (%s): this process uses its own key."


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(KEY_FILE_EMPTY.format(path=path))
    return key


def debug_secret_key(path: Path) -> str:
    """The key stored at `path`, drawn and stored (mode 0600) when the file is missing.

    Processes starting at once agree on one key and none reads a half-written file: the
    key is written whole to a private temporary file, then hard-linked to `path`, which
    fails when the name exists (an exclusive create, like `O_EXCL`); the loser reads the
    winner's key. Where the file cannot be made (a read-only checkout, a filesystem
    without hard links) the process logs why and uses a key of its own.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.")  # 0600
    except OSError as exc:
        log.warning(KEY_FILE_UNWRITABLE, path, exc)
        return secrets.token_urlsafe(50)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(50) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process stored its key first: everyone uses that one
        except OSError as exc:
            log.warning(KEY_FILE_UNWRITABLE, path, exc)
            return _read(Path(temporary))
    finally:
        os.unlink(temporary)
    return _read(path)
