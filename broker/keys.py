"""CurveZMQ keys for remote front nodes: `python -m broker.keys create DIR NAME`.

A worker serving TCP and every node using it each own a key pair. The worker's key folder
holds `worker.key_secret` and an `authorized/` folder of the public keys (`*.key`) of nodes
allowed in; a node's key folder holds `node.key_secret` and the worker's public `worker.key`.
Key folders are created 0700 and files 0600 (the umask is narrowed while writing), so a
secret key is never readable by anyone else, not even for an instant. As ssh does, a secret
key file or `authorized/` folder that group or others could read or write, or that another
user owns, is refused rather than used; and `create` never replaces a key unless told to.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

# `create` makes folders and files that `check_private` accepts.
from broker.files import GROUP_OR_OTHERS, PRIVATE_FOLDER_MODE, not_private

WORKER_NAME = "worker"
NODE_NAME = "node"
AUTHORIZED = "authorized"  # in the worker's key folder: public keys of nodes let in


class CurveKeys(NamedTuple):
    public: bytes
    secret: bytes
    server_public: bytes | None = None  # a node's: the worker it trusts
    authorized: Path | None = None  # a worker's: the folder of node keys it lets in


def create(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into `folder` (made 0700); returns both paths.

    The files are created 0600. Raises FileExistsError, before writing anything, when either
    file already exists and `force` is false; with `force` the old files are replaced.
    """
    import zmq.auth  # only remote set-ups pay for it

    paths = (folder / f"{name}.key", folder / f"{name}.key_secret")
    for path in paths:
        # lexists: a dangling symlink is an existing name too, and writing would follow it.
        if os.path.lexists(path) and not force:
            raise FileExistsError(f"{path} already exists: use --force to replace it")
    old_umask = os.umask(GROUP_OR_OTHERS)  # what mkdir and open create is ours alone
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
        if name == WORKER_NAME:
            (folder / AUTHORIZED).mkdir(mode=PRIVATE_FOLDER_MODE, exist_ok=True)
        for path in paths:
            # Rewriting a file in place would keep its old mode (and follow a symlink):
            # remove it so that the new one is created under the narrow umask.
            path.unlink(missing_ok=True)
        public, secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    return Path(public), Path(secret)


def check_private(path: Path) -> None:
    """Return quietly if `path` is owned by this user and closed to group and others.

    Raises PermissionError with one sentence naming the file and the reason otherwise, and
    FileNotFoundError when it is missing.
    """
    # stat, not lstat: what must be private is the file whose bytes get read, which for a
    # symlink (a mounted secret, say) is its target; a symlink's own mode means nothing.
    problem, fix = not_private(path, os.stat(path))
    if problem is not None:
        raise PermissionError(f"{problem}; {fix}" if fix else problem)


def for_worker(folder: Path) -> CurveKeys:
    """The worker's key pair and the folder of authorized node keys.

    Raises PermissionError when the secret key or `authorized/` is not private (see
    `check_private`), and OSError or ValueError when a file is missing or unreadable.
    """
    import zmq.auth  # only remote set-ups pay for it

    secret_file = folder / f"{WORKER_NAME}.key_secret"
    check_private(secret_file)
    public, secret = zmq.auth.load_certificate(secret_file)
    authorized = folder / AUTHORIZED
    if not authorized.is_dir():
        raise FileNotFoundError(f"{authorized} is missing: put authorized node keys there")
    # Whoever can write here can let their own node in.
    check_private(authorized)
    return CurveKeys(public=public, secret=secret, authorized=authorized)


def for_node(folder: Path) -> CurveKeys:
    """The node's key pair and the public key of the worker it trusts.

    Raises PermissionError when the secret key is not private (see `check_private`), and
    OSError or ValueError when a file is missing or unreadable.
    """
    import zmq.auth  # only remote set-ups pay for it

    secret_file = folder / f"{NODE_NAME}.key_secret"
    check_private(secret_file)
    public, secret = zmq.auth.load_certificate(secret_file)
    server_public, _ = zmq.auth.load_certificate(folder / f"{WORKER_NAME}.key")
    return CurveKeys(public=public, secret=secret, server_public=server_public)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("create", help="create a key pair")
    make.add_argument("folder", type=Path)
    make.add_argument("name", choices=[WORKER_NAME, NODE_NAME])
    make.add_argument("--force", action="store_true", help="replace an existing key pair")
    args = parser.parse_args(argv)
    try:
        public, secret = create(args.folder, args.name, force=args.force)
    except OSError as exc:  # an existing key, a folder we may not write: say so, no traceback
        print(exc, file=sys.stderr)
        return 1
    print(f"public key: {public}\nsecret key: {secret} (keep it private)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
