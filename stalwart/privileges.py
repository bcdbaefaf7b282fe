"""Giving up root for the account the server runs as.

* :func:`switch_to` — become a uid/gid for good; the master calls it after binding (``RUN_AS_USER``,
  ``RUN_AS_GROUP``, :mod:`.server.master`).
* :func:`become_owner_of` — a root ``stalwart-cli`` that is about to write the server's files becomes
  the owner of the data directory first. ``sudo stalwart-cli acme rollback …`` would otherwise leave
  root-owned lock, account and certificate files under ``<data-dir>/acme/`` that the server, running
  as that owner, can no longer open: every later renewal would fail until the certificates expire.

Why switch rather than chown what was written: every file and directory a CLI action may create
would need its own chown, and any one missed (a temporary file, a directory made on the way) breaks
the server later. Running as the owner makes the files right by construction, and the CLI can then
do nothing to them that the server itself could not.
"""
from __future__ import annotations

import grp
import os
import pwd

from .errors import StalwartError


class PrivilegeError(StalwartError):
    """Running as root, the process could not become the owner of the server's files."""


def switch_to(uid: int | None, gid: int | None) -> None:
    """Become ``uid`` and ``gid`` (None: keep that one) irrevocably, with no supplementary groups:
    the group first, since after ``setuid`` the process may no longer change it. Raises ``OSError``
    when the kernel refuses (no CAP_SETUID/CAP_SETGID)."""
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def _name(table, ident: int) -> str:
    try:
        return table(ident)[0]
    except KeyError:
        return str(ident)


def become_owner_of(path: str) -> str | None:
    """When this process runs as root and ``path`` belongs to another user, switch to that user and
    to the group of ``path`` (the identity the server writes it with). Returns a one-line notice of
    the switch, or None when nothing changed (not root, ``path`` owned by root or missing). Raises
    :class:`PrivilegeError` when the switch fails: the caller must then refuse to touch ``path``."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PrivilegeError(f"cannot read the owner of {path}: {exc}") from None
    if st.st_uid == 0:
        return None
    who = f"{_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)} (uid {st.st_uid}, gid {st.st_gid})"
    try:
        switch_to(st.st_uid, st.st_gid)
    except OSError as exc:
        raise PrivilegeError(f"{path} belongs to {who} and this process cannot switch to that user "
                             f"({exc.strerror or exc}); run the command as that user instead, so that the "
                             "server can still write the files it changes") from None
    if os.getresuid() != (st.st_uid,) * 3 or os.getresgid() != (st.st_gid,) * 3:
        raise PrivilegeError(f"switching to {who}, the owner of {path}, left uid {os.getresuid()} "
                             f"gid {os.getresgid()}")
    return f"acting as {who}, the owner of {path}"
