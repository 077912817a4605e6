"""CurveZMQ keys for remote front nodes: `python -m broker.keys create DIR NAME`.

A worker serving TCP and every node using it each own a key pair. The worker's key folder
holds `worker.key_secret` and an `authorized/` folder of the public keys (`*.key`) of nodes
allowed in; a node's key folder holds `node.key_secret` and the worker's public `worker.key`.
Key folders are created 0700 and files 0600 (the umask is narrowed while writing), so a
secret key is never readable by anyone else, not even for an instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

WORKER_NAME = "worker"
NODE_NAME = "node"
AUTHORIZED = "authorized"  # in the worker's key folder: public keys of nodes let in


class CurveKeys(NamedTuple):
    public: bytes
    secret: bytes
    server_public: bytes | None = None  # a node's: the worker it trusts
    authorized: Path | None = None  # a worker's: the folder of node keys it lets in


def create(folder: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into `folder`; returns both paths."""
    import zmq.auth  # only remote set-ups pay for it

    old_umask = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if name == WORKER_NAME:
            (folder / AUTHORIZED).mkdir(mode=0o700, exist_ok=True)
        public, secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    return Path(public), Path(secret)


def for_worker(folder: Path) -> CurveKeys:
    """The worker's key pair and the folder of authorized node keys.

    Raises OSError or ValueError when a file is missing or unreadable.
    """
    import zmq.auth  # only remote set-ups pay for it

    public, secret = zmq.auth.load_certificate(folder / f"{WORKER_NAME}.key_secret")
    authorized = folder / AUTHORIZED
    if not authorized.is_dir():
        raise FileNotFoundError(f"{authorized} is missing: put authorized node keys there")
    return CurveKeys(public=public, secret=secret, authorized=authorized)


def for_node(folder: Path) -> CurveKeys:
    """The node's key pair and the public key of the worker it trusts."""
    import zmq.auth  # only remote set-ups pay for it

    public, secret = zmq.auth.load_certificate(folder / f"{NODE_NAME}.key_secret")
    server_public, _ = zmq.auth.load_certificate(folder / f"{WORKER_NAME}.key")
    return CurveKeys(public=public, secret=secret, server_public=server_public)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("create", help="create a key pair")
    make.add_argument("folder", type=Path)
    make.add_argument("name", choices=[WORKER_NAME, NODE_NAME])
    args = parser.parse_args(argv)
    public, secret = create(args.folder, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
