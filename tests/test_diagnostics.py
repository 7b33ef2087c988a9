"""TensorBoard diagnostics and the HParams session, read back from the event files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from imgcls.callbacks.diagnostics import ClassificationDiagnostics, per_class_table
from imgcls.data.spec import DataSpec
from imgcls.runs.figures import confusion_figure, confusion_matrix_image
from imgcls.tasks.train import train


def read_events(logdir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    ea.Reload()
    return ea


def test_event_files_hold_diagnostics_and_hparams(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        [
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=10",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=1",
            "+trainer.num_sanity_val_steps=0",
            "data.eval_batch_size=250",
            "callbacks.diagnostics.every_n_epochs=2",
            "model.optimizer.lr=0.002",
        ],
    )
    train(cfg)
    ea = read_events(tmp_path / "tensorboard")

    tags = ea.Tags()
    for stage in ("val", "test"):
        assert f"{stage}/confusion_matrix" in tags["images"]
        assert f"{stage}/misclassified" in tags["images"]
        assert f"{stage}/per_class/text_summary" in tags["tensors"]
    # every 2nd epoch, plus the last one: epochs 2 and 3 of 3
    # at the steps of the epoch's scalars
    assert [e.step for e in ea.Images("val/confusion_matrix")] == [19, 29]
    image = ea.Images("test/confusion_matrix")[0]
    assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"
    table = ea.Tensors("val/per_class/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert table.splitlines()[0] == "| class | precision | recall | F1 | support |"
    assert table.splitlines()[-1].endswith("| 500 |")  # 2 validation batches of 250, counted once
    assert [r.split("|")[1].strip() for r in table.splitlines()[2:12]] == [
        str(i) for i in range(10)
    ]
    assert "val/f1_macro" in tags["scalars"] and "test/f1_macro" in tags["scalars"]

    # HParams: the run's config against val/acc_best and test/acc, no fake step-0 values
    content = ea.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/acc_best", "test/acc"}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = session.session_start_info.hparams
    assert hp["model/optimizer/lr"].number_value == 0.002
    assert hp["model/net/_target_"].string_value == "imgcls.models.nets.lenet.LeNet"
    assert "hp_metric" not in tags["scalars"]
    assert [e.step for e in ea.Scalars("val/acc_best")] == [9, 19, 29]
    assert len(ea.Scalars("test/acc")) == 1


def test_per_class_metrics_from_logits() -> None:
    spec = DataSpec(3, 1, (4, 4), ("cat", "dog", "fox"), (0.5,), (0.5,))
    module = SimpleNamespace(spec=spec, device=torch.device("cpu"))
    cb = ClassificationDiagnostics(max_misclassified=2)
    cb.setup(None, module, "fit")
    cb._start(module)
    y = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])  # cat: P 1/2 R 1/2; dog: P 2/3 R 1; fox: P 0 R 0
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 4, 4)
    cb._collect(module, torch.nn.functional.one_hot(pred, 3).float(), (x, y))
    values = cb.metrics.compute()
    assert values["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    table = per_class_table(list(spec.class_names), values, values["confusion"].sum(1)).splitlines()
    assert table[2] == "| cat | 0.5000 | 0.5000 | 0.5000 | 2 |"
    assert table[3] == "| dog | 0.6667 | 1.0000 | 0.8000 | 2 |"
    assert table[4] == "| fox | 0.0000 | 0.0000 | 0.0000 | 1 |"
    # both misclassified images are shown, with their true and predicted classes
    shown = cb._grid_errors()
    assert [(t, p) for _, t, p, _ in shown] == [(0, 1), (2, 0)]
    # display uint8 of x = 1.0 and 4.0 (normalized with 0.5/0.5): 255 after clamping
    assert [int(img[0, 0, 0]) for img, *_ in shown] == [255, 255]


def test_misclassified_grid_samples_errors_across_classes() -> None:
    """Class-sorted validation data (all of class 0 first): the grid still shows every class."""
    k = 10
    spec = DataSpec(k, 1, (4, 4), tuple(str(i) for i in range(k)), (0.5,), (0.5,))
    module = SimpleNamespace(spec=spec, device=torch.device("cpu"))
    cb = ClassificationDiagnostics(max_misclassified=32)
    cb.setup(None, module, "fit")
    cb._start(module)
    y = torch.arange(k).repeat_interleave(50)  # sorted by class, 50 errors per class
    pred = (y + 1) % k
    x = torch.zeros(len(y), 1, 4, 4)
    for start in range(0, len(y), 64):  # in batches, like validation
        sl = slice(start, start + 64)
        cb._collect(module, torch.nn.functional.one_hot(pred[sl], k).float(), (x[sl], y[sl]))
    shown = [t for _, t, _, _ in cb._grid_errors()]
    assert len(shown) == 32
    counts = [shown.count(c) for c in range(k)]
    assert min(counts) >= 3 and max(counts) <= 4, counts  # 32 over 10 classes
    # within a class, later errors are sampled too (a reservoir, not the first ones)
    one = ClassificationDiagnostics(max_misclassified=4)
    spec1 = DataSpec(2, 1, (4, 4), ("a", "b"), (0.0,), (1.0,))
    m1 = SimpleNamespace(spec=spec1, device=torch.device("cpu"))
    one.setup(None, m1, "fit")
    one._start(m1)
    yy = torch.zeros(200, dtype=torch.long)
    xx = (torch.arange(200.0) / 255).view(200, 1, 1, 1).expand(200, 1, 4, 4)
    one._collect(
        m1, torch.nn.functional.one_hot(torch.ones(200, dtype=torch.long), 2).float(), (xx, yy)
    )
    values = [int(img[0, 0, 0]) for img, *_ in one._grid_errors()]
    assert len(values) == 4 and max(values) >= 8, values


def test_confusion_matrix_colors_follow_row_fractions() -> None:
    """matplotlib's figure: cells colored by the row fraction, counts printed, classes named;
    TensorBoard gets it as an RGB image."""
    cm = torch.tensor([[3, 0], [1, 2]])
    fig = confusion_figure(cm, ["a", "b"], "t")
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == [[1.0, 0.0], [1 / 3, 2 / 3]]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3"]  # no text for empty cells
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    image = confusion_matrix_image(cm, ["a", "b"])
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) > 200
