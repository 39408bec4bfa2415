"""Every `jaxfm pretrain ... --resume` in the README continues the run that the README started
in that workdir: the resume check (typed flags must match WORKDIR/run.json) accepts it."""

import json
import re
import shlex

import pytest

from jaxfm.cli import _parser
from jaxfm.cli.graphfm import PRETRAIN_OUTPUTS, _pretrain_config, _resumed_pretrain_config
from jaxfm.cli.resume import given_dests
from tests.conftest import REPO


def _pretrain_commands() -> list[list[str]]:
    """The README's `jaxfm pretrain` commands (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "README.md").read_text())
    return [
        shlex.split(line, comments=True)[1:]
        for line in text.splitlines()
        if line.startswith("jaxfm pretrain")
    ]


def _args(argv):
    parser = _parser()
    args = parser.parse_args(argv)
    args.given = given_dests(parser, argv)
    return args


def _record(args, workdir):
    from jaxfm.graphfm import graphfm_config
    from jaxfm.train.graphfm_pretrain import run_info

    cfg = _pretrain_config(args)
    workdir.mkdir(parents=True, exist_ok=True)
    record = {
        "pretrain": run_info(cfg, graphfm_config(cfg.model)),
        "outputs": {k: getattr(cfg, k) for k in PRETRAIN_OUTPUTS},
    }
    (workdir / "run.json").write_text(json.dumps(record, default=str))


RESUMES = [argv for argv in _pretrain_commands() if "--resume" in argv]


def test_the_readme_has_resume_examples():
    assert len(RESUMES) >= 2


@pytest.mark.parametrize("resume", RESUMES, ids=" ".join)
def test_readme_resume_example_is_accepted(resume, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = resume[resume.index("--workdir") + 1]
    commands = _pretrain_commands()
    starts = [
        argv
        for argv in commands[: commands.index(resume)]
        if "--resume" not in argv and "--workdir" in argv
        and argv[argv.index("--workdir") + 1] == workdir
    ]  # fmt: skip
    assert starts, f"the README resumes {workdir} without starting a run there first"
    _record(_args(starts[-1]), tmp_path / workdir)
    args = _args(resume)
    cfg = _resumed_pretrain_config(args, _pretrain_config(args))  # raises if refused
    started = _pretrain_config(_args(starts[-1]))
    assert (cfg.accum, cfg.data, cfg.model, cfg.steps) == (
        started.accum, started.data, started.model, started.steps,
    )  # fmt: skip
