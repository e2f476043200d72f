"""`icae-train`'s flags are derived from the configuration dataclasses: every field of
TrainConfig (and of IcaeConfig, OverfitConfig, Protocol where a command takes them) has its
flag, parsing no flags gives the field's default (or the command's), and a flag's value
reaches its field."""

import argparse
import dataclasses

import pytest

from icae_train.cli import build_parser
from icae_train.commands.common import icae_config, train_config
from icae_train.config import IcaeConfig, OverfitConfig, Protocol, TrainConfig
from icae_train.flags import add_flags, default_of, from_args

# The flags each command cannot do without (none of them a TrainConfig field but --steps).
REQUIRED = {
    "pretrain": ["--model", "m", "--run-dir", "run"],
    "finetune": ["--model", "m", "--run-dir", "run", "--init-adapter", "a", "--data", "d"],
}


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def flags(command: str) -> dict[str, argparse.Action]:
    return {s: a for a in subparser(command)._actions for s in a.option_strings}


def parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *argv])


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def other_value(kind, default):
    """A value of the field's type that is not its default."""
    if default is None:
        return 0.25
    if kind in (int, "int"):
        return default + 3
    return default * 3 + 0.5


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_every_train_config_field_has_a_flag_that_defaults_to_the_field(command):
    options = flags(command)
    for f in dataclasses.fields(TrainConfig):
        assert flag(f.name) in options, f"TrainConfig.{f.name} has no {flag(f.name)} in {command}"
    # --steps is the one field without a default: required.
    assert options["--steps"].required
    with pytest.raises(SystemExit):
        parse(command, *REQUIRED[command])

    args = parse(command, *REQUIRED[command], "--steps", "7")
    config = train_config(args)
    assert config.steps == 7
    for f in dataclasses.fields(TrainConfig):
        if f.name == "steps":
            continue
        assert getattr(config, f.name) == default_of(TrainConfig, f.name), f.name
        if f.name != "cpu_autocast":  # its flag is the mode: off, on or auto
            assert getattr(args, f.name) == default_of(TrainConfig, f.name), f.name
    assert args.cpu_autocast == "off"
    assert config == TrainConfig(steps=7)


def test_every_train_config_flag_reaches_its_field():
    argv, expected = [], {}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "cpu_autocast":
            continue
        value = other_value(f.type, default_of(TrainConfig, f.name) if f.name != "steps" else 4)
        argv += [flag(f.name), str(value)]
        expected[f.name] = value
    args = parse("pretrain", *REQUIRED["pretrain"], *argv, "--device", "cpu")
    assert train_config(args) == TrainConfig(**expected)
    on = parse("pretrain", *REQUIRED["pretrain"], *argv, "--device", "cpu", "--cpu-autocast", "on")
    assert train_config(on) == TrainConfig(**expected, cpu_autocast=True)


def test_icae_flags_take_the_commands_defaults():
    args = parse("pretrain", *REQUIRED["pretrain"], "--steps", "1")
    assert icae_config(args) == IcaeConfig()
    options = flags("pretrain")
    for f in dataclasses.fields(IcaeConfig):
        has_flag = f.metadata.get("flag") is not False
        assert (flag(f.name) in options) == has_flag, f.name

    args = parse("pretrain", *REQUIRED["pretrain"], "--steps", "1", "--mem-size", "8")
    args.target_modules = "q_proj,k_proj"
    args.lm_token = args.slot_projector = True
    assert icae_config(args) == IcaeConfig(
        mem_size=8, target_modules=["q_proj", "k_proj"], lm_token=True, slot_projector=True
    )

    # The overfit check's adapter is smaller and adapts every projection; no --lm-token.
    args = parse("overfit", "--model", "m")
    assert "--lm-token" not in flags("overfit")
    assert icae_config(args) == IcaeConfig(
        mem_size=16,
        lora_r=16,
        target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj".split(","),
    )


def test_overfit_and_search_flags_come_from_their_configs():
    args = parse("overfit", "--model", "m")
    assert args.steps == 300  # the command's default, not OverfitConfig's
    assert from_args(OverfitConfig, args) == OverfitConfig(max_steps=300)
    args = parse("overfit", "--model", "m", "--steps", "5", "--lr", "0.5")
    assert from_args(OverfitConfig, args) == OverfitConfig(max_steps=5, lr=0.5)

    args = parse("search", "--model", "m", "--corpus", "c", "--out", "o")
    assert from_args(Protocol, args) == Protocol()
    # The search shares the training loop's defaults instead of repeating them.
    assert Protocol().seed == default_of(TrainConfig, "seed")
    assert Protocol().target_modules == IcaeConfig().target_modules
    assert Protocol().compression_rate == IcaeConfig().compression_rate
    options = flags("search")
    for f in dataclasses.fields(Protocol):
        has_flag = f.metadata.get("flag") is not False
        assert (flag(f.name) in options) == has_flag, f.name


def test_the_helper_derives_each_kind_of_flag():
    @dataclasses.dataclass
    class Example:
        count: int = dataclasses.field(metadata={"help": "how many"})
        rate: float | None = None
        names: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
        switch: bool = False
        mode: bool = dataclasses.field(
            default=False, metadata={"argparse": {"choices": ["x", "y"], "default": "x"}}
        )
        hidden: int = dataclasses.field(default=1, metadata={"flag": False})

    parser = argparse.ArgumentParser()
    add_flags(parser, Example, defaults={"rate": 0.5})
    actions = {a.dest: a for a in parser._actions}
    assert actions["count"].required and actions["count"].help == "how many"
    assert "hidden" not in actions
    args = parser.parse_args(["--count", "2"])
    assert vars(args) == {
        "count": 2,
        "rate": 0.5,
        "names": "a,b",
        "switch": False,
        "mode": "x",
    }
    with pytest.raises(TypeError, match="mode"):
        from_args(Example, args)
    args = parser.parse_args(["--count", "2", "--names", "c", "--switch", "--rate", "1"])
    assert from_args(Example, args, mode=True) == Example(2, 1.0, ["c"], True, True)
