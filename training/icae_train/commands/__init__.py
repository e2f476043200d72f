"""The subcommands of `icae-train`, one module each: `add_parser(sub)` adds the command's
parser (its flags, and `run` as its `func`) to the subparsers `sub`; `run(args)` runs it."""

from . import (
    build_corpus,
    eval,
    export,
    finetune,
    make_cloze,
    make_qa,
    overfit,
    pretrain,
    promote,
    refine_eval,
    search,
    tokenize,
)

# In the order `icae-train --help` lists them.
COMMANDS = (
    build_corpus,
    tokenize,
    overfit,
    make_qa,
    make_cloze,
    search,
    promote,
    pretrain,
    finetune,
    eval,
    refine_eval,
    export,
)
