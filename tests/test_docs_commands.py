"""Every command quoted in README.md and docs/*.md works, so the docs cannot rot.

A command is a line of a fenced ```bash block (``\\`` continuations joined, comments stripped).
``python src/<entry>.py`` commands are composed with Hydra's compose API in the default suite (a
renamed key, group or option fails in seconds) and run as subprocesses with tiny limits under
``-m slow``; ``python scripts/<x>.py`` flags are checked against ``--help`` (and run under slow).
Any other command must be on ALLOWED. Placeholders come from PLACEHOLDERS only. What cannot run on
this machine (a cluster, a GPU, a download) belongs in a ```text block with a note why.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# README's fault-tolerance section moves to docs/safety.md; until then it is checked there
SKIPPED_SECTIONS = {"## Fault tolerance: resume, safe checkpoints, guarded training"}
# entry point -> its config (a command's kind is its script path, never a shell word like `eval`)
ENTRIES = {f"src/{n}.py": n for n in ("train", "eval", "predict", "export")}
# the docs' placeholder vocabulary: what each stands for in a quoted command
PLACEHOLDERS = {
    "<run>": "a training run dir",
    "<timestamp>": "a run dir's name under logs/train/runs",
    "<ckpt>": "a checkpoint file of that run",
    "<image>": "an image file",
    "<folder>": "a folder of images",
    "<weights>": "a local ResNet-18 state-dict file",
}
# non-python commands the docs may quote; each is checked by its function, never run
ALLOWED = {"make", "pip", "source", "tensorboard", "mlflow", "wandb", "eval", "pytest"}
HYDRA_FLAGS = {"-m", "--multirun", "--help", "--info"}
# limits only (++: a quoted command may set them); the commands' own loggers and callbacks stay
TINY = tiny(prefix="++", quiet=False, logger=None)
TINY_EVAL = tiny(task="eval", prefix="++", quiet=False, logger=None)


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    argv: tuple[str, ...]

    @property
    def kind(self) -> str:
        if self.argv[0] != "python":
            return self.argv[0]
        script = self.argv[1] if len(self.argv) > 1 else ""
        if script in ENTRIES:
            return script
        if re.fullmatch(r"scripts/\w+\.py", script):
            return "script"
        return "unknown python"


def _bash_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line inside a ```bash block, outside SKIPPED_SECTIONS."""
    out, fence, skip = [], None, False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if fence is None and line.startswith("## "):
            skip = path.name == "README.md" and line.strip() in SKIPPED_SECTIONS
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "bash" and not skip:
            out.append((n, line))
    return out


def doc_commands() -> list[Command]:
    commands, pending, start = [], "", 0
    for path in DOCS:
        for n, line in _bash_lines(path):
            start = start if pending else n
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            argv = shlex.split(pending + line, comments=True)
            pending = ""
            if argv:
                commands.append(Command(f"{path.relative_to(ROOT)}:{start}", tuple(argv)))
    return commands


COMMANDS = doc_commands()
ENTRY_COMMANDS = [c for c in COMMANDS if c.kind in ENTRIES]
IDS = [c.where for c in COMMANDS]


def placeholders(cmd: Command) -> set[str]:
    return set(re.findall(r"<[^<>\s]*>", " ".join(cmd.argv)))


def substitute(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    """Each placeholder replaced by its value (fails on one outside the vocabulary)."""
    out = []
    for arg in argv:
        for ph in re.findall(r"<[^<>\s]*>", arg):
            assert ph in values, f"unknown placeholder {ph}; the docs use {sorted(PLACEHOLDERS)}"
            arg = arg.replace(ph, values[ph])
        out.append(arg)
    return out


def test_the_docs_quote_the_commands_this_test_checks() -> None:
    """Parsing found the README's two commands and the guides' commands (not silently none)."""
    readme = [c.argv for c in COMMANDS if c.where.startswith("README.md")]
    assert ("make", "train") in readme and ("make", "test") in readme
    assert len(ENTRY_COMMANDS) >= 40, len(ENTRY_COMMANDS)
    assert {c.kind for c in ENTRY_COMMANDS} == set(ENTRIES)
    assert {c.where.split(":")[0] for c in COMMANDS} >= {"README.md", "docs/data.md"}


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_every_command_has_a_known_form(cmd: Command) -> None:
    """Known command, known placeholders; allowed non-python commands name what exists."""
    unknown = placeholders(cmd) - set(PLACEHOLDERS)
    assert not unknown, f"{cmd.where}: unknown placeholder(s) {sorted(unknown)}"
    assert cmd.kind in {*ENTRIES, "script", *ALLOWED}, f"{cmd.where}: unknown command {cmd.argv}"
    if cmd.kind == "script":
        assert (ROOT / cmd.argv[1]).is_file(), f"{cmd.where}: no {cmd.argv[1]}"
    elif cmd.kind == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert set(cmd.argv[1:]) <= set(targets), f"{cmd.where}: no make target {cmd.argv[1:]}"
    elif cmd.kind == "pip":
        deps = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
        extras = re.findall(r"^(\w+) = \[", deps.split("\n[")[0], re.M)
        m = re.fullmatch(r"\.\[([\w,]+)\]", cmd.argv[-1])
        assert cmd.argv[1:3] == ("install", "-e") and m, f"{cmd.where}: {cmd.argv}"
        assert set(m.group(1).split(",")) <= set(extras), f"{cmd.where}: unknown extra"
    elif cmd.kind == "pytest":
        assert all((ROOT / a.split("::")[0]).exists() for a in cmd.argv[1:] if "/" in a)


def _jobs(args: list[str]) -> list[list[str]]:
    """The override list of every job the command would run (a -m sweep expanded)."""
    flags = [a for a in args if a.startswith("-")]
    assert set(flags) <= HYDRA_FLAGS, f"unknown flags {flags}"
    overrides = [a for a in args if not a.startswith("-")]
    if not {"-m", "--multirun"} & set(flags):
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_job(config: str, overrides: list[str], out: Path) -> None:
    """Compose and resolve ``configs/<config>.yaml`` with ``overrides`` as the entry point would."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.paths.log_dir = str(out / "logs")
            del cfg["hydra"]
        OmegaConf.to_container(cfg, resolve=True)
    finally:
        GlobalHydra.instance().clear()


FAKE = {
    "<run>": "/nonexistent/logs/train/runs/2026-01-01_00-00-00_000000",
    "<timestamp>": "2026-01-01_00-00-00_000000",
    "<ckpt>": "/nonexistent/run/checkpoints/epoch_000.ckpt",
    "<image>": "/nonexistent/digit.png",
    "<folder>": "/nonexistent/images",
    "<weights>": "/nonexistent/resnet18.pth",
}


@pytest.mark.parametrize("cmd", ENTRY_COMMANDS, ids=[c.where for c in ENTRY_COMMANDS])
def test_entry_point_overrides_compose(cmd: Command, tmp_path: Path) -> None:
    """Every override of every quoted train/eval/predict/export command still composes."""
    args = substitute(cmd.argv[2:], FAKE)
    for job in _jobs(args):
        compose_job(ENTRIES[cmd.kind], job, tmp_path)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.kind == "script"], ids=lambda c: c.where)
def test_script_flags_exist(cmd: Command, tmp_path: Path) -> None:
    """Every ``--flag`` of a quoted script command is one its parser defines; make_shards' Hydra
    overrides compose."""
    script = cmd.argv[1]
    defined = set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", (ROOT / script).read_text()))
    flags = {a.split("=")[0] for a in cmd.argv[2:] if a.startswith("--")}
    assert flags <= defined, f"{cmd.where}: {script} has no {sorted(flags - defined)}"
    if script == "scripts/make_shards.py":
        overrides = [a for a in cmd.argv[2:] if "=" in a and not a.startswith("-")]
        compose_job("train", overrides, tmp_path)


# --- slow tier: every entry-point and script command runs, with tiny limits --------------------


def _run(argv: list[str], root: Path, env: dict[str, str], timeout: float = 1800) -> str:
    """Run ``argv`` in ``root`` in its own session (its group killed on timeout); its output."""
    log = root / "command.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            argv, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    out = log.read_text()
    assert rc == 0, f"{' '.join(argv)}\nexit {rc}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="session")
def doc_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict]:
    """A copy of the project (MNIST linked) holding what the placeholders name: one tiny training
    run, small digit sets, a folder of images, ResNet-18 state dicts (no download)."""
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("docs_root")
    for d in ("src", "scripts", "configs"):
        shutil.copytree(ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg*"))
    (root / "data").mkdir()
    (root / "data" / "MNIST").symlink_to(ROOT / "data" / "MNIST")
    env = {
        **os.environ,
        "PROJECT_ROOT": str(root),
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "scripts")]),
        "TORCH_HOME": str(root / "torch_home"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    script = [sys.executable, "scripts/make_digit_datasets.py", "--train", "300", "--test", "60"]
    _run(script, root, env)
    state = torchvision.models.get_model("resnet18", weights=None).state_dict()
    for path in (root / "torch_home/hub/checkpoints/resnet18-f37072fd.pth", root / "resnet18.pth"):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    (root / "images").mkdir()
    for png in sorted((root / "data/digits_csv/train").glob("*.png"))[:6]:
        shutil.copy(png, root / "images" / png.name)
    _run([sys.executable, "src/train.py", *TINY], root, env)
    run = next((root / "logs/train/runs").iterdir())
    values = {
        "<run>": str(run),
        "<timestamp>": run.name,
        "<ckpt>": str(next(run.glob("checkpoints/epoch_*.ckpt"))),
        "<image>": str(next((root / "images").iterdir())),
        "<folder>": str(root / "images"),
        "<weights>": str(root / "resnet18.pth"),
    }
    return root, env, values


def with_tiny_limits(kind: str, args: list[str]) -> list[str]:
    """``args`` with tiny limits in place of the command's own epochs/batches/trials."""
    extra = {"src/train.py": TINY, "src/eval.py": TINY_EVAL}.get(kind, [])
    if kind == "src/train.py" and any(a.startswith("hparams_search=") for a in args):
        extra = [*extra, "hydra.sweeper.n_trials=2"]
    if kind == "script" and args[0] == "scripts/benchmark.py":
        extra = ["--quick"]
    keys = {e.split("=")[0].lstrip("+") for e in extra}
    return [a for a in args if a.split("=")[0].lstrip("+") not in keys] + extra


RUNNABLE = [c for c in COMMANDS if c.kind in {*ENTRIES, "script"}]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNNABLE, ids=[c.where for c in RUNNABLE])
def test_command_runs(cmd: Command, doc_root: tuple[Path, dict[str, str], dict]) -> None:
    """The quoted command exits 0 (in a copy of the project, with tiny limits)."""
    root, env, values = doc_root
    args = with_tiny_limits(cmd.kind, substitute(cmd.argv[1:], values))
    _run([sys.executable, *args], root, env)
