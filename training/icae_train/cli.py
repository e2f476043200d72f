"""icae-train: build data, pretrain, fine-tune, evaluate and export ICAE adapters."""

from __future__ import annotations

import argparse

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The `icae-train` parser: one subcommand per module of icae_train.commands."""
    parser = argparse.ArgumentParser(prog="icae-train", description=__doc__)
    sub = parser.add_subparsers(required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
