"""`nodeos storage ...`: the Ceph services' launcher (run by the catalog, not by hand)."""

from __future__ import annotations

import argparse

RUN_HELP = """\
Prepare a Ceph daemon of this node if needed, then become it (exec). The
catalog's ceph-mon, ceph-mgr and ceph-osd services run this; the agent has
written ceph.conf, the keyrings, bootstrap.json and node.json (this node's
id, address and OSD disk policy) under --ceph-dir from the replicated state. Exit 3: those files are not there yet, or the
cluster did not answer while preparing (the Monitor restarts the service).
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    storage = subparsers.add_parser("storage", help="Ceph storage: the daemons' launcher")
    sub = storage.add_subparsers(dest="storage_command", metavar="ACTION")
    sub.required = True
    run = sub.add_parser("run", help="prepare and exec a Ceph daemon (used by the catalog's Ceph services)",
                         description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("kind", choices=["mon", "mgr", "osd"])
    run.add_argument("--ceph-dir", required=True, help="this node's Ceph directory (the agent's state dir/ceph)")
    run.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from nodeos.storage.launch import run

    return run(args.kind, args.ceph_dir)
