"""Everything read from a file is data: crafted checkpoints, run dirs and resume states, tried
as an attacker would hand them to a user (issue 26).

Each crafted file is a real tiny LeNet checkpoint (2 steps on MNIST) with one change, written with
``torch.save`` and read back with ``weights_only=True``. The attack tests import nothing but the
tasks the old code had, so they run against it too (each failed there: see docs/safety.md)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from imgcls.errors import UserError
from imgcls.tasks.evaluate import evaluate
from imgcls.tasks.train import train
from tests.conftest import compose_config, run_entry, tiny
from tests.test_safe_checkpoints import TINY  # the same two-step LeNet run

QUIET_EVAL = tiny(task="eval", test_batches=None)  # no data.* override
QUICK_EVAL = [*QUIET_EVAL, "data.test_size=100"]
PRECIOUS = "precious data\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_run")
    train(compose_config("train", TINY, out))
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(PRECIOUS)
    return path


@pytest.fixture
def craft(tiny_run: Path, tmp_path: Path) -> Callable[..., Path]:
    """``craft(change)``: the tiny checkpoint with ``change(ckpt)`` applied, alone in a dir."""

    def make(change: Callable[[dict[str, Any]], None], name: str = "crafted.ckpt") -> Path:
        raw = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
        ckpt = copy.deepcopy(raw)
        change(ckpt)
        path = tmp_path / "lone" / name
        path.parent.mkdir(exist_ok=True)
        torch.save(ckpt, path)
        return path

    return make


def assert_one_error_line(proc, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def _call(target: str, *args: Any) -> dict[str, Any]:
    return {"_target_": target, "_args_": list(args)}


# datamodule_hyper_parameters payloads: (key, value for the victim path) -> the refused key path
DATA_PAYLOADS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "attribute_walk_unlink": (
        "mean",
        lambda v: _call("imgcls.data.csv_table.Path.unlink", v),
        "datamodule_hyper_parameters.mean._target_",
    ),
    "attribute_walk_open_truncate": (
        "mean",
        lambda v: _call("imgcls.data.images.io.open", v, "w"),
        "datamodule_hyper_parameters.mean._target_",
    ),
    "attribute_walk_write_text": (
        "std",
        lambda v: _call(
            "imgcls.data.csv_table.Path.write_text", _call("imgcls.data.csv_table.Path", v), "x"
        ),
        "datamodule_hyper_parameters.std._target_",
    ),
    "oc_create_interpolation": (
        "mean",
        lambda v: "${oc.create:{_target_: pathlib.Path.unlink, _args_: [" + v + "]}}",
        "datamodule_hyper_parameters.mean=",
    ),
    "node_inside_a_tuple": (
        "std",
        lambda v: (_call("pathlib.Path.unlink", v),),
        "datamodule_hyper_parameters.std[0]._target_",
    ),
    "datamodule_outside_the_package": (
        "_target_",
        lambda v: "imgcls.data.csv_table.Path",
        "datamodule_hyper_parameters._target_",
    ),
}


def _data_payload(name: str, victim: Path) -> Callable[[dict[str, Any]], None]:
    key, value, _ = DATA_PAYLOADS[name]

    def change(ckpt: dict[str, Any]) -> None:
        ckpt["datamodule_hyper_parameters"][key] = value(str(victim))

    return change


def test_eval_refuses_a_lone_checkpoints_data_payload(craft, victim: Path, tmp_path) -> None:
    ckpt = craft(_data_payload("attribute_walk_unlink", victim))
    proc = run_entry("eval", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path / 'logs'}", *QUICK_EVAL)
    assert victim.read_text() == PRECIOUS
    assert_one_error_line(proc, str(ckpt), DATA_PAYLOADS["attribute_walk_unlink"][2])


@pytest.mark.parametrize("name", sorted(DATA_PAYLOADS))
def test_every_data_payload_is_refused_naming_the_key(name, craft, victim: Path, tmp_path) -> None:
    ckpt = craft(_data_payload(name, victim))
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *QUICK_EVAL], tmp_path / "eval")
    with pytest.raises(UserError) as err:
        evaluate(cfg)
    assert victim.read_text() == PRECIOUS
    assert str(ckpt) in str(err.value) and DATA_PAYLOADS[name][2] in str(err.value)


def _shared_run(tiny_run: Path, tmp_path: Path, victim: Path) -> Path:
    """A copy of a run dir whose ``.hydra/config.yaml`` names a payload as its data."""
    run = tmp_path / "shared_run"
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        f"data:\n  _target_: pathlib.Path.unlink\n  _args_: ['{victim}']\n"
    )
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("entry", ["eval", pytest.param("export", marks=pytest.mark.slow)])
def test_a_shared_run_dirs_config_builds_nothing(entry, tiny_run, tmp_path, victim) -> None:
    ckpt = _shared_run(tiny_run, tmp_path, victim)
    # no data.* override: it would reach the old code's payload as a keyword and stop it
    extra = QUIET_EVAL if entry == "eval" else ["format=torchscript", "parity_images=8"]
    proc = run_entry(entry, f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path / 'logs'}", *extra)
    assert victim.read_text() == PRECIOUS
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_resume_never_deletes_outside_the_checkpoint_dir(tiny_run, tmp_path, victim) -> None:
    """A ModelCheckpoint state without ``dirpath`` whose "worse" best file is
    ``<run>/checkpoints/../../victim``: Lightning would delete it when a better one is saved."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for path in (run / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
        lexical = f"{run}/checkpoints/../../{victim.name}"
        state = ckpt["callbacks"][key]
        state.pop("dirpath")
        state.update(best_model_path=lexical, kth_best_model_path=lexical)
        state.update(best_model_score=torch.tensor(-1.0), kth_value=torch.tensor(-1.0))
        state["best_k_models"] = {lexical: torch.tensor(-1.0)}
        torch.save(ckpt, path)
    proc = run_entry("train", *TINY, "trainer.max_epochs=2", f"resume={run}")
    assert victim.read_text() == PRECIOUS
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ModelCheckpoint state not restored" in proc.stdout + proc.stderr


def _tiny_folder(root: Path) -> None:
    """10 class folders ``0``..``9`` of 28x28 gray images (MNIST's spec), train and test."""
    for split in ("train", "test"):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (28, 28), 20 * c + i).save(root / split / str(c) / f"{i}.png")


def _folder_data(root: Path, **extra: Any) -> Callable[[dict[str, Any]], None]:
    def change(ckpt: dict[str, Any]) -> None:
        ckpt["datamodule_hyper_parameters"] = {
            "_target_": "imgcls.data.folder_datamodule.FolderDataModule",
            "root": str(root),
            "channels": 1,
            "image_size": [28, 28],
            "num_workers": 0,
            **extra,
        }

    return change


def test_a_stored_cache_dir_is_not_where_eval_writes(craft, tmp_path: Path) -> None:
    _tiny_folder(tmp_path / "images")
    elsewhere = tmp_path / "elsewhere"
    ckpt = craft(_folder_data(tmp_path / "images", cache_dir=str(elsewhere / "cache")))
    overrides = [f"ckpt_path={ckpt}", *QUIET_EVAL]
    cfg = compose_config("eval", [*overrides, f"paths.cache_dir={tmp_path / 'mine'}"], tmp_path)
    metrics = evaluate(cfg)
    assert "test/acc" in metrics
    assert not elsewhere.exists()
    assert list((tmp_path / "mine").rglob("*"))  # the command's own cache dir was used


def test_a_stored_digits_dir_never_builds_a_data_set(craft, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    change = _folder_data(elsewhere / "digits_folder", digits_dir=str(elsewhere), cache_dir=None)
    ckpt = craft(change)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *QUIET_EVAL], tmp_path / "eval")
    with pytest.raises(UserError):
        evaluate(cfg)
    assert not elsewhere.exists()


def test_a_stored_mnist_data_dir_is_not_where_eval_unpacks(craft, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    ckpt = craft(_set("datamodule_hyper_parameters.data_dir", str(elsewhere)))
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *QUICK_EVAL], tmp_path / "eval")
    assert "test/acc" in evaluate(cfg)
    assert not elsewhere.exists()


def test_a_stored_opt_in_never_reads_outside_the_data_root(craft, tmp_path: Path) -> None:
    _tiny_folder(tmp_path / "images")
    outside = tmp_path / "outside.png"
    Image.new("L", (28, 28), 7).save(outside)
    (tmp_path / "images" / "test" / "0" / "link.png").symlink_to(outside)
    ckpt = craft(_folder_data(tmp_path / "images", cache_dir=None, allow_outside_root=True))
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *QUIET_EVAL], tmp_path / "eval")
    with pytest.raises(UserError, match="outside the data root"):
        evaluate(cfg)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(ckpt: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = ckpt
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


# malformed data-only checkpoints: the change -> what the one error line names
MALFORMED = {
    "net_as_a_string": (_set("hyper_parameters.net", "lenet"), "hyper_parameters.net='lenet'"),
    "spec_without_num_classes": (
        _set("hyper_parameters.spec.num_classes", KeyError),
        "hyper_parameters.spec.num_classes",
    ),
    "image_size_ab": (
        _set("hyper_parameters.spec.image_size", "ab"),
        "hyper_parameters.spec.image_size='ab'",
    ),
    "state_dict_list": (_set("state_dict", []), "state_dict"),
    "net_value_of_the_wrong_type": (
        _set("hyper_parameters.net.channels", "ab"),
        "net: LeNet cannot be built from the stored values",
    ),
    "label_smoothing_text": (
        _set("hyper_parameters.label_smoothing", "much"),
        "hyper_parameters.label_smoothing='much'",
    ),
}


def test_eval_names_a_malformed_value_in_one_line(craft, tmp_path: Path) -> None:
    ckpt = craft(MALFORMED["net_as_a_string"][0])
    proc = run_entry("eval", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path / 'logs'}", *QUICK_EVAL)
    assert_one_error_line(proc, str(ckpt), MALFORMED["net_as_a_string"][1])


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_checkpoints_are_one_user_error(name, craft, tmp_path: Path) -> None:
    from imgcls.models.classifier import ImageClassifier

    change, named = MALFORMED[name]
    ckpt = craft(change)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *QUICK_EVAL], tmp_path / "eval")
    for load in (lambda: evaluate(cfg), lambda: ImageClassifier.load_from_checkpoint(ckpt)):
        with pytest.raises(UserError) as err:
            load()
        assert str(ckpt) in str(err.value) and named in str(err.value)


def test_resume_with_a_malformed_global_step_is_one_line(tiny_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    for path in (run / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, weights_only=True)
        ckpt["global_step"] = "many"
        torch.save(ckpt, path)
    proc = run_entry("train", *TINY, "trainer.max_epochs=2", f"resume={run}")
    assert_one_error_line(proc, "global_step='many'")


def test_a_checkpoint_never_chooses_where_the_model_reads_or_writes(craft, tmp_path) -> None:
    from imgcls.models.classifier import ImageClassifier

    def change(ckpt: dict[str, Any]) -> None:
        ckpt["hyper_parameters"].update(cache_dir=str(tmp_path / "x"), weights="/etc/passwd")

    model = ImageClassifier.load_from_checkpoint(craft(change))
    assert model.cache_dir is None


def test_the_projects_own_modules_pass_without_a_list(tmp_path: Path, monkeypatch) -> None:
    """A user's net/datamodule module in ``src/`` (outside ``imgcls``) is theirs; an installed
    library's, a module found elsewhere on ``sys.path`` (never imported to decide) and the entry
    scripts are not."""
    import sys

    from imgcls.engine.boundary import UnsafeCheckpointError, project_module, resolve

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "my_nets.py").write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n    pass\n"
    )
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "planted_nets.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    assert project_module("my_nets") and "my_nets" not in sys.modules
    assert resolve("net", "my_nets.Net", "hyper_parameters.net._target_").__name__ == "Net"
    assert not project_module("planted_nets") and "planted_nets" not in sys.modules
    assert not project_module("torchvision.models") and not project_module("os")
    assert not project_module("imgcls.engine.boundary")  # the package's own rules apply
    assert not project_module("hydra_plugins")  # a namespace shared with installed plugins
    for target in ("planted_nets.Net", "torchvision.models.resnet.ResNet"):
        with pytest.raises(UnsafeCheckpointError, match="or in the project's src/"):
            resolve("net", target, "hyper_parameters.net._target_")
    with pytest.raises(UnsafeCheckpointError, match="not a subclass of LightningDataModule"):
        resolve("datamodule", "my_nets.Net", "datamodule_hyper_parameters._target_")
    sys.modules.pop("my_nets", None)
