"""The `jaxfm` command's routing, help texts, version and flag vocabulary."""

import argparse

import pytest

from jaxfm.cli import _parser, _route_embed, main
from jaxfm.cli.resume import given_dests


def test_embed_routes_fimp_models_to_fimp_embed_and_keeps_graphfm():
    fimp = _route_embed(["embed", "--model", "fimp-vit", "--checkpoint", "c", "--dataset", "d"])
    assert fimp == ["fimp", "embed", "--model", "fimp-vit", "--checkpoint", "c", "--dataset", "d"]
    assert _route_embed(["embed", "--model=fimp-scgpt", "--out", "o"])[:2] == ["fimp", "embed"]
    gfm = ["embed", "--checkpoint", "c", "--dataset", "d", "--out", "o"]
    assert _route_embed(gfm) == gfm
    with_model = ["embed", "--model", "graphfm", *gfm[1:]]
    assert _route_embed(with_model) == with_model  # GraphFM embed parses --model itself
    assert _route_embed(["pretrain", "--model", "fimp-vit"]) == ["pretrain", "--model", "fimp-vit"]


def test_embed_keeps_an_argument_spelled_graphfm():
    """A path named `graphfm` is an argument like any other (it used to be dropped)."""
    argv = ["embed", "--model-dir", "graphfm", "--data", "d.npz", "--out", "o.npy"]
    args = _parser().parse_args(_route_embed(argv))
    assert args.checkpoint == "graphfm" and args.dataset == "d.npz" and args.model == "graphfm"


def _leaf_commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_commands(sub, (*prefix, name))
            return
    yield prefix, parser


LEAVES = [p for p, _ in _leaf_commands(_parser()) if p != ("convert",)]


@pytest.mark.parametrize("command", [*LEAVES, ("convert",), ("fimp",), ("graphfm",)], ids=" ".join)
def test_every_subcommand_help_exits_0_and_shows_defaults(command, capsys):
    try:
        rc = main([*command, "--help"])  # `convert` returns its status instead of exiting
    except SystemExit as e:
        rc = e.code
    assert rc == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command not in (("fimp",), ("graphfm",)):
        assert "(default:" in out, f"jaxfm {' '.join(command)} --help shows no defaults"


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_every_flag_has_help_text(command):
    parser = dict(_leaf_commands(_parser()))[command]
    missing = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and not a.help and a.help != argparse.SUPPRESS
    ]
    assert not missing, f"jaxfm {' '.join(command)}: flags without help: {missing}"


def test_convert_help_is_the_converters(capsys):
    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "jaxfm convert" in out and "--verify" in out


def test_version(capsys):
    from jaxfm import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"jaxfm {__version__}"


def test_embed_help_lists_model(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    assert "--model" in out and "fimp-vit" in out and "--model-dir" in out


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["finetune", "--mode", "mft", "--checkpoint", "m", "--dataset", "d"], "checkpoint", "m"),
        (["finetune", "--mode", "mft", "--model-dir", "m", "--data", "d"], "dataset", "d"),
        (["embed", "--checkpoint", "m", "--dataset", "d", "--out", "o.npy"], "dataset", "d"),
        (["pretrain", "--variant", "medium"], "model", "medium"),
        (["pretrain", "--config", "medium"], "model", "medium"),
        (["fimp", "train", "--task", "image", "--config", "small"], "variant", "small"),
        (["fimp", "train", "--task", "image", "--model-dir", "vit"], "checkpoint", "vit"),
        (["fimp", "attention-map", "--model", "m", "--out", "o"], "model", "m"),
        (["fimp", "embed", "--model", "fimp-vit", "--model-dir", "m", "--out", "o.npy",
          "--dataset", "x.npz"], "data", "x.npz"),
        (["graphfm", "summary", "--variant", "large"], "config", "large"),
        # every subcommand that takes a dataset or a model directory takes both spellings
        (["pretrain", "--dataset", "a", "--data", "b"], "data", ["a", "b"]),
        (["fimp", "train", "--task", "image", "--dataset", "x.npz"], "data", "x.npz"),
        (["fimp", "train", "--task", "image", "--checkpoint", "vit"], "checkpoint", "vit"),
        (["fimp", "embed", "--model", "fimp-vit", "--checkpoint", "m", "--out", "o.npy"],
         "checkpoint", "m"),
        (["fimp", "attention-map", "--checkpoint", "m", "--out", "o"], "model", "m"),
        (["fimp", "attention-map", "--model-dir", "m", "--dataset", "x", "--out", "o"], "data",
         "x"),
        (["embed", "--model-dir", "m", "--data", "d", "--out", "o.npy"], "checkpoint", "m"),
    ],
)  # fmt: skip
def test_one_vocabulary_old_spellings_are_aliases(argv, dest, value):
    assert getattr(_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_one_vocabulary_on_every_subcommand(command):
    """--data and --dataset, --model-dir and --checkpoint: one flag, both spellings, everywhere."""
    parser = dict(_leaf_commands(_parser()))[command]
    flags = {s: a for a in parser._actions for s in a.option_strings}
    for new, old in (("--data", "--dataset"), ("--model-dir", "--checkpoint")):
        if new in flags or old in flags:
            assert flags.get(new) is flags.get(old), f"jaxfm {' '.join(command)}: {new} / {old}"


def test_given_dests_are_the_typed_flags():
    p = _parser()
    given = given_dests(p, ["pretrain", "--steps", "5", "--data", "a", "--resume"])
    assert {"steps", "data", "resume"} <= given and "seed" not in given and "lr" not in given
    assert p.parse_args(["pretrain"]).steps == 300  # defaults restored afterwards


def test_model_dir_may_be_a_workdir(tmp_path):
    from jaxfm.loading import resolve_model_dir

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path / "run") == tmp_path / "run" / "model"
    (tmp_path / "other" / "m2").mkdir(parents=True)
    (tmp_path / "other" / "m2" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"not a model directory.*m2"):
        resolve_model_dir(tmp_path / "other")


def test_fimp_train_needs_task_unless_resuming(tmp_path, capsys):
    assert main(["fimp", "train", "--workdir", str(tmp_path)]) == 2
    assert "--task is required" in capsys.readouterr().err
    assert main(["fimp", "train", "--resume", "--workdir", str(tmp_path / "none")]) == 2
    assert "no run.json" in capsys.readouterr().err


TRAINING = [
    ["pretrain"],
    ["fimp", "train", "--task", "image"],
    ["finetune", "--mode", "mft", "--model-dir", "m", "--data", "d"],
]


@pytest.mark.parametrize("command", TRAINING)
def test_training_commands_pass_tensorboard_and_profile_steps(command, capsys):
    from jaxfm.cli.fields import observability

    args = _parser().parse_args([*command, "--tensorboard", "--profile-steps", "2:3"])
    assert observability(args) == {"tensorboard": True, "profile_steps": (2, 3)}
    off = _parser().parse_args(command)
    assert observability(off) == {"tensorboard": False, "profile_steps": None}
    assert main([*command, "--profile-steps", "3"]) == 2
    assert "--profile-steps '3': expected A:B" in capsys.readouterr().err


def _config_field_names() -> set[str]:
    import dataclasses

    from jaxfm.fimp.data import DataOptions
    from jaxfm.train.fimp import RunConfig
    from jaxfm.train.graphfm_finetune import FinetuneConfig
    from jaxfm.train.graphfm_pretrain import PretrainConfig
    from jaxfm.train.optim import OptimizerConfig

    classes = (PretrainConfig, FinetuneConfig, RunConfig, DataOptions, OptimizerConfig)
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_every_flag_help_is_its_own_whole_entry(command):
    """Help texts from the config docstrings: not the bare field name, not cut short (balanced
    parentheses and backticks), and without a neighbouring field's ``name:`` entry."""
    import re

    fields = _config_field_names()
    parser = dict(_leaf_commands(_parser()))[command]
    bad = []
    for a in parser._actions:
        if not a.option_strings or a.help in (None, argparse.SUPPRESS) or "-h" in a.option_strings:
            continue
        text, own = a.help.replace("%%", "%"), a.dest.split("__")[-1]
        names = {own.replace("_", " ")} | {s.strip("-").replace("-", " ") for s in a.option_strings}
        if text.strip().rstrip(".").lower() in names:
            bad.append(f"{a.option_strings[0]}: only the field name ({text!r})")
        if text.count("(") != text.count(")") or text.count("`") % 2:
            bad.append(f"{a.option_strings[0]}: unbalanced, cut short? ({text!r})")
        # an entry's "name:" as it appears inlined: ``name``: anywhere, or name: after "; "
        for m in re.finditer(r"(?:``(\w+)``|(?:^|; )(\w+)):\s", text):
            other = m.group(1) or m.group(2)
            if other in fields and other != own:
                bad.append(f"{a.option_strings[0]}: includes the entry of {other!r} ({text!r})")
    assert not bad, f"jaxfm {' '.join(command)}:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("argv", "flag", "expected"),
    [
        (["fimp", "train"], "--graph", "(self loops only: the no-graph ablation)"),
        (["fimp", "train"], "--mask-rate", "(``expression``; FIMP paper: 80 %)"),
        (["finetune"], "--workdir", "None: nothing is written)"),
        (["pretrain"], "--steps", "optimizer steps."),
        (["pretrain"], "--checkpoint-every", "save every N steps (and at the end)."),
        (["fimp", "train"], "--epochs", "maximum epochs."),
    ],
)
def test_flag_help_is_the_whole_docstring_entry(argv, flag, expected):
    parser = dict(_leaf_commands(_parser()))[tuple(argv)]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    assert expected in action.help.replace("%%", "%")


def test_doc_parses_attributes_by_indentation():
    from jaxfm.cli.fields import _doc

    class C:
        """A config.

        Attributes:
          graph: ``"file"`` or ``"none"`` (self
            loops only: the ablation).
          a, b: shared text
            over: two lines.
          c: last.

        Example:
          d: not an attribute.
        """

    class First:
        """Attributes:
        steps: optimizer steps.
        """

    assert _doc(C, "graph") == '``"file"`` or ``"none"`` (self loops only: the ablation).'
    assert _doc(C, "b") == "shared text over: two lines."
    assert _doc(C, "c") == "last." and _doc(C, "d") == "" and _doc(C, "over") == ""
    assert _doc(First, "steps") == "optimizer steps."


def test_an_optional_int_flag_takes_none_and_rejects_words():
    from jaxfm.cli.graphfm import _finetune_config

    base = ["finetune", "--model-dir", "m", "--data", "d.npz"]
    cfg, _ = _finetune_config(_parser().parse_args(base))
    assert cfg.context_nodes is None  # the config's default
    cfg, _ = _finetune_config(_parser().parse_args([*base, "--feature-hidden", "None"]))
    assert cfg.feature_hidden is None  # an int default, set to None from the command line
    cfg, _ = _finetune_config(_parser().parse_args([*base, "--context-nodes", "2048"]))
    assert cfg.context_nodes == 2048
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--context-nodes", "many"])
