"""predict.py: class names and top-k from the checkpoint alone, bad files reported by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from imgcls.errors import ConfigError, DataError
from imgcls.tasks.predict import predict
from tests.conftest import run_entry


def read_predictions(path: Path) -> pd.DataFrame:
    # every cell as text: ids and class names must come back exactly as written
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def prob_columns(df: pd.DataFrame) -> list[str]:
    return sorted(
        (c for c in df.columns if c.startswith("top") and c.endswith("_prob")),
        key=lambda c: int(c[3:-5]),
    )


@pytest.fixture
def folder_with_bad_files(mnist_png_folder, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    src, truth = mnist_png_folder
    folder = tmp_path / "images"
    shutil.copytree(src, folder)
    (folder / "corrupt.png").write_bytes(b"this is not a png")
    good = (folder / "digit_001.png").read_bytes()
    (folder / "sub" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "readme.txt").write_text("not an image: ignored")
    return folder, truth


def test_predict_folder_entry_point(
    trained_lenet_ckpt, folder_with_bad_files, tmp_path: Path
) -> None:
    """As typed by a user: names, top-5 sorted probabilities, bad files listed with their error."""
    folder, truth = folder_with_bad_files
    proc = run_entry(
        "predict",
        f"ckpt_path={trained_lenet_ckpt}",
        f"input={folder}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = next((tmp_path / "logs").glob("predict/runs/*/predictions.csv"))
    df = read_predictions(out)

    expected = sorted([*truth, "corrupt.png", "sub/truncated.png"])
    assert df["file"].tolist() == expected  # one row per image, sorted by relative path
    assert list(df.columns[:3]) == ["file", "pred", "prob"] and df.columns[-1] == "error"

    bad = df[df["file"].isin(["corrupt.png", "sub/truncated.png"])]
    assert (bad["pred"] == "").all() and (bad["prob"] == "").all()
    assert "corrupt.png" in bad["error"].iloc[0] and "truncated.png" in bad["error"].iloc[1]
    assert "corrupt.png" in proc.stdout + proc.stderr  # also reported in the log

    ok = df[df["error"] == ""]
    assert len(ok) == len(truth)
    accuracy = (ok["pred"] == ok["file"].map(truth)).mean()
    assert accuracy >= 0.9, accuracy
    assert (ok["pred"] == ok["top1"]).all() and (ok["prob"] == ok["top1_prob"]).all()
    probs = ok[prob_columns(ok)].astype(float)
    assert probs.shape[1] == 5  # default top_k = min(5, 10 classes)
    assert (probs.diff(axis=1).iloc[:, 1:] <= 0).all().all()  # sorted, best first
    assert (probs.sum(axis=1) <= 1 + 1e-6).all()
    names = ok[[f"top{i}" for i in range(1, 6)]]
    assert (names.nunique(axis=1) == 5).all()


def test_predict_all_classes_sum_to_one(
    trained_lenet_ckpt, mnist_png_folder, make_cfg, tmp_path: Path
) -> None:
    folder, truth = mnist_png_folder
    image = folder / "digit_001.png"
    predict(make_cfg("predict", [f"ckpt_path={trained_lenet_ckpt}", f"input={image}", "top_k=10"]))
    df = read_predictions(tmp_path / "predictions.csv")
    assert df["file"].tolist() == [str(image)]
    assert sorted(df.loc[0, [f"top{i}" for i in range(1, 11)]]) == [str(i) for i in range(10)]
    probs = df[prob_columns(df)].astype(float).iloc[0]
    assert list(probs) == sorted(probs, reverse=True)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert df.loc[0, "pred"] == truth["digit_001.png"]


def test_predict_on_error_stop_names_the_file(
    trained_lenet_ckpt, folder_with_bad_files, make_cfg, tmp_path
) -> None:
    folder, _ = folder_with_bad_files
    cfg = make_cfg(
        "predict", [f"ckpt_path={trained_lenet_ckpt}", f"input={folder}", "on_error=stop"]
    )
    with pytest.raises(DataError, match=r"cannot decode image .*corrupt\.png"):
        predict(cfg)
    assert not (tmp_path / "predictions.csv").exists()


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("on_error=ignore", ConfigError, "on_error='ignore' must be one of"),
        ("top_k=0", ConfigError, "top_k=0 must be at least 1"),
        ("input=/nonexistent/images", DataError, "input not found: /nonexistent/images"),
    ],
)
def test_predict_bad_options(
    trained_lenet_ckpt, mnist_png_folder, make_cfg, override, error, message
) -> None:
    folder, _ = mnist_png_folder
    cfg = make_cfg("predict", [f"ckpt_path={trained_lenet_ckpt}", f"input={folder}", override])
    with pytest.raises(error, match=message):
        predict(cfg)


def test_predict_empty_folder(trained_lenet_ckpt, make_cfg, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    cfg = make_cfg("predict", [f"ckpt_path={trained_lenet_ckpt}", f"input={tmp_path / 'empty'}"])
    with pytest.raises(DataError, match=r"no image files .* in folder .*empty"):
        predict(cfg)


def test_predict_csv_keeps_every_row_in_order(
    trained_lenet_ckpt, mnist_png_folder, make_cfg, tmp_path
) -> None:
    """Rows that name no readable image keep their place, with the reason and the CSV row."""
    folder, truth = mnist_png_folder
    rows = ["digit_002", "", "missing_one", "../../etc/passwd", "digit_004.png", "digit_005"]
    (tmp_path / "ask.csv").write_text("id,note\n" + "".join(f"{r},x\n" for r in rows))
    cfg = make_cfg(
        "predict",
        [f"ckpt_path={trained_lenet_ckpt}", f"input={tmp_path / 'ask.csv'}", f"image_dir={folder}"],
    )
    # no submission with holes: one error naming every row without a prediction
    with pytest.raises(DataError) as e:
        predict(cfg)
    message = str(e.value)
    assert message.startswith("submission.csv not written: 3 of 6 rows of ")
    assert (
        "'': empty image name (ask.csv row 2" in message
        and "'missing_one': image file not found" in message
    )
    assert "'../../etc/passwd': " in message and "pass submission=false" in message
    assert not (tmp_path / "submission.csv").exists()
    df = read_predictions(tmp_path / "predictions.csv")
    assert df["id"].tolist() == rows
    errors = df["error"].tolist()
    assert errors[0] == errors[4] == errors[5] == ""
    assert errors[1] == "empty image name (ask.csv row 2 (line 3), column 'id')"
    assert errors[2].startswith("image file not found: ") and "ask.csv row 3 (line 4)" in errors[2]
    assert "escapes the image directory" in errors[3] and "ask.csv row 4 (line 5)" in errors[3]
    assert (
        df.loc[0, "pred"] == truth["digit_002.png"] and df.loc[4, "pred"] == truth["digit_004.png"]
    )
    readable = [r for r in rows if r.startswith("digit")]
    (tmp_path / "ok.csv").write_text("id\n" + "".join(f"{r}\n" for r in readable))
    ok = make_cfg(
        "predict",
        [f"ckpt_path={trained_lenet_ckpt}", f"input={tmp_path / 'ok.csv'}", f"image_dir={folder}"],
        out=tmp_path / "ok",
    )
    metrics = predict(ok)
    assert metrics["predict/images"] == 3 and metrics["predict/failed"] == 0
    submission = read_predictions(tmp_path / "ok" / "submission.csv")
    assert list(submission.columns) == ["id", "label"]
    assert submission["id"].tolist() == readable
    assert submission["label"].tolist() == [df.loc[i, "pred"] for i in (0, 4, 5)]

    stop = make_cfg(
        "predict",
        [
            f"ckpt_path={trained_lenet_ckpt}",
            f"input={tmp_path / 'ask.csv'}",
            f"image_dir={folder}",
            "on_error=stop",
        ],
        out=tmp_path / "stop",
    )
    with pytest.raises(
        DataError, match=r"^empty image name \(ask\.csv row 2 \(line 3\), column 'id'\)"
    ):
        predict(stop)
    assert not (tmp_path / "stop" / "predictions.csv").exists()


def test_predict_digits_csv_submission_scores_on_hidden_truth(make_cfg, tmp_path: Path) -> None:
    """The id,label digits built by the project's script: LeNet, 5 epochs, >= 95 % on the
    label-less test.csv scored against the hidden truth; submission rows = test.csv rows."""
    import make_digit_datasets

    from imgcls.tasks.train import train

    assert make_digit_datasets.main(["--out", str(tmp_path / "data"), "--forms", "csv"]) == 0
    root = tmp_path / "data" / "digits_csv"
    train(
        make_cfg(
            "train",
            [
                "data=csv",
                f"data.root={root}",
                "data.cache_dir=null",
                "model=lenet",
                "trainer.max_epochs=5",
                "test=false",
                "logger=csv",
            ],
            out=tmp_path / "train",
        )
    )
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    predict(
        make_cfg(
            "predict", [f"ckpt_path={ckpt}", f"input={root / 'test.csv'}"], out=tmp_path / "predict"
        )
    )

    submission = read_predictions(tmp_path / "predict" / "submission.csv")
    asked = read_predictions(root / "test.csv")
    truth = read_predictions(root / "test_truth.csv")
    assert list(submission.columns) == ["id", "label"]
    assert submission["id"].tolist() == asked["id"].tolist() == truth["id"].tolist()
    accuracy = (submission["label"] == truth["label"]).mean()
    assert accuracy >= 0.95, accuracy


@pytest.mark.slow
def test_predict_console_table_and_counts(
    trained_lenet_ckpt, folder_with_bad_files, tmp_path: Path
) -> None:
    """A single image prints its prediction; a folder with 2 unreadable files says so in counts
    and table; the entry point exits 1 on a CSV whose submission would have holes."""
    folder, truth = folder_with_bad_files
    one = run_entry(
        "predict",
        f"ckpt_path={trained_lenet_ckpt}",
        f"input={folder / 'digit_001.png'}",
        f"paths.log_dir={tmp_path / 'one'}",
        "extras.print_config=false",
    )
    assert one.returncode == 0, one.stderr[-3000:]
    text = one.stdout + one.stderr
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["file", "pred", "prob"])
    row = lines[header + 1].split()
    assert row[0].endswith("digit_001.png") and row[1] == truth["digit_001.png"]
    assert 0 < float(row[2]) <= 1
    assert "1 row(s), 1 predicted, 0 failed" in text

    many = run_entry(
        "predict",
        f"ckpt_path={trained_lenet_ckpt}",
        f"input={folder}",
        f"paths.log_dir={tmp_path / 'many'}",
        "extras.print_config=false",
    )
    assert many.returncode == 0, many.stderr[-3000:]
    text = many.stdout + many.stderr
    n = len(truth) + 2
    assert f"{n} row(s), {n - 2} predicted, 2 failed (rows with an 'error')" in text
    assert f"... and {n - 20} more rows" in text
    assert "2 image(s) could not be read" in text

    (tmp_path / "holes.csv").write_text("id\ndigit_002\nnot_there\n")
    holes = run_entry(
        "predict",
        f"ckpt_path={trained_lenet_ckpt}",
        f"input={tmp_path / 'holes.csv'}",
        f"image_dir={folder}",
        f"paths.log_dir={tmp_path / 'holes'}",
        "extras.print_config=false",
    )
    assert holes.returncode == 1
    assert holes.stderr.count("error: submission.csv not written: 1 of 2 rows") == 1
    assert "'not_there': image file not found" in holes.stderr and "Traceback" not in holes.stderr
    assert not list((tmp_path / "holes").glob("predict/runs/*/submission.csv"))
    assert list((tmp_path / "holes").glob("predict/runs/*/predictions.csv"))
