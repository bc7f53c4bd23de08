"""``napari-rat config check FILE...``: validate experiment YAML files."""

from __future__ import annotations

import argparse


def _check(args: argparse.Namespace) -> int:
    from napari_rat.config import check_config_file

    status = 0
    for file in args.files:
        problems, warnings = check_config_file(file)
        if problems:
            status = 1
            for problem in problems:
                print(problem)
        else:
            for message in warnings:
                print(f"{file}: warning: {message}")
            print(f"{file}: ok")
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="validate experiment configs")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="print 'ok' or each problem with its YAML path")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check)
