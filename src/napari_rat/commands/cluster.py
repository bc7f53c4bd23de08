"""``napari-rat cluster start|stop|status``: the local Ray head that jobs go to by default."""

from __future__ import annotations

import argparse

from napari_rat.cluster.local_head import LOCAL_HEAD_NICENESS


def _start(args: argparse.Namespace) -> int:
    from napari_rat.cluster import start_local_head
    from napari_rat.errors import CommandError
    from napari_rat.train.ray_head import RayHeadError

    try:
        head, started = start_local_head(num_cpus=args.num_cpus, niceness=args.niceness)
    except (RayHeadError, ImportError) as exc:
        raise CommandError(str(exc)) from None
    word = "started" if started else "already running:"
    print(f"local Ray head {word} pid {head.pid}, dashboard {head.dashboard_url}")
    print("jobs go there by default (napari-rat submit); stop it with `napari-rat cluster stop`")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from napari_rat.cluster import stop_local_head

    head = stop_local_head()
    print("no local Ray head was running" if head is None else f"stopped pid {head.pid}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from napari_rat.cluster import local_head_status

    status = local_head_status()
    if status is None:
        print("no local Ray head is running (start one with `napari-rat cluster start`)")
        return 1
    for key, value in status.items():
        print(f"{key}: {value}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cluster`` with its ``start``, ``stop`` and ``status`` subcommands."""
    parser = subparsers.add_parser("cluster", help="start, stop or inspect the local Ray head")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start the local head (127.0.0.1) and keep it running")
    start.add_argument("--num-cpus", type=int, metavar="N", help="CPUs Ray may schedule")
    start.add_argument(
        "--niceness",
        type=int,
        default=LOCAL_HEAD_NICENESS,
        metavar="N",
        help="CPU priority of the head and its jobs (POSIX nice; 0 normal, default "
        f"{LOCAL_HEAD_NICENESS}: an open viewer stays responsive)",
    )
    start.set_defaults(func=_start)
    sub.add_parser("stop", help="stop the local head by its pid").set_defaults(func=_stop)
    sub.add_parser("status", help="is the local head running, and where").set_defaults(func=_status)
