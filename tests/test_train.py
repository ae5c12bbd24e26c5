"""The train job on a real local Ray: 2 CPU workers, checkpoints, resume after a kill, bad data."""
import csv
import json
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carray import jpeg
from carray.config import OptionError, PrepConfig, TrainConfig
from carray.modelfiles import load_model
from carray.prep import run_prep
from carray.restore import restore_pixels
from carray.train import DataError, inspect_data, run_train
from carray.storage import resolve
from support.images import smooth_image
from support.faults import wait_for
from support.jobs import resumed_from, run_job, start_job

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("tiny")
    images = root / "images"
    images.mkdir()
    from support.images import png_bytes

    for i in range(8):
        (images / f"i{i}.png").write_bytes(png_bytes(smooth_image(96, 96, seed=i)))
    run_prep(PrepConfig(input=str(images), output=str(root / "data"), quality=("10",), split="75/25/0", stride=16))
    return root / "data"


def read_metrics(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_ema_validates_and_exports_the_average_and_a_resume_keeps_it(tiny_data, tmp_path):
    """--ema: the average is what is validated and exported; the raw weights go on training; a
    resumed run continues both."""
    import torch

    from carray.model import build_model, save_model

    torch.manual_seed(0)
    save_model(build_model("unshuffled-cnn", channels=1, blocks=1, width=8), str(tmp_path / "base.pt"), {"note": "base"})
    cfg = dict(data=str(tiny_data), output=str(tmp_path / "run"), init_from=str(tmp_path / "base.pt"), steps=4, batch_size=8,
               lr=1e-2, val_every=2, checkpoint_every=2, val_patches=16, ema=0.9)
    run_train(TrainConfig(**cfg))
    states = sorted((tmp_path / "run" / "train").glob("checkpoint_*/state.pt"))
    last = torch.load(states[-1], map_location="cpu", weights_only=True)
    assert last["step"] == 4 and last["ema_averaged"] == 4
    averaged, raw = last["model"], last["raw"]
    assert any(not torch.allclose(averaged[k], raw[k]) for k in raw)  # lr 1e-2: the average lags the weights
    resumed = run_train(TrainConfig(**{**cfg, "steps": 6}))
    again = torch.load(sorted((tmp_path / "run" / "train").glob("checkpoint_*/state.pt"))[-1], map_location="cpu", weights_only=True)
    assert again["step"] == 6 and again["ema_averaged"] == 6 and resumed["resumed_from"] == 4
    model, _ = load_model(resumed["model"])
    exported = model.state_dict()
    kept = [torch.load(p, map_location="cpu", weights_only=True) for p in (tmp_path / "run" / "train").glob("checkpoint_*/state.pt")]
    assert any(all(torch.equal(exported[k], st["model"][k]) for k in exported) for st in kept)  # an average...
    assert not any(all(torch.equal(exported[k], st["raw"][k]) for k in exported) for st in kept)  # ...never the raw weights
    with pytest.raises(OptionError, match="--ema"):
        run_train(TrainConfig(**{**cfg, "ema": 1.0}))


def test_two_workers_train_checkpoint_get_killed_and_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--output", str(out), "--workers", "2", "--steps", "40", "--batch-size", "16",
            "--val-every", "5", "--checkpoint-every", "10", "--val-patches", "64", "--lr-schedule", "cosine"]
    first = start_job("train.py", args, tmp_path / "first.log")

    def checkpointed() -> bool:
        # Ray Train registers a checkpoint in its snapshot file right after writing it; resuming reads that.
        assert first.poll() is None, "the first run ended before its first checkpoint:\n" + (tmp_path / "first.log").read_text()[-3000:]
        return (out / "train" / "checkpoint_manager_snapshot.json").exists()

    wait_for(checkpointed, timeout=240, what="the first run's first registered checkpoint", poll=0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-run, after a checkpoint
    first.wait()
    assert not (out / "model.pt").exists()
    # A folder Ray Train never registered (a worker wrote it and died before the report was taken).
    orphan = out / "train" / "checkpoint_2000-01-01_00-00-00.000000"
    orphan.mkdir()
    (orphan / "state.pt").write_bytes(b"never registered")

    code, log = run_job("train.py", args, tmp_path / "second.log")
    assert code == 0, log[-3000:]
    assert not orphan.exists(), "a checkpoint folder Ray Train never registered is removed at the end"
    snapshot = json.loads((out / "train" / "checkpoint_manager_snapshot.json").read_text())
    registered = {r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]}
    assert registered and {p.name for p in (out / "train").glob("checkpoint_*") if p.is_dir()} == registered
    resumed = resumed_from(log)
    assert resumed >= 10, "the re-run must resume from the checkpoint, not from step 0"
    rows = read_metrics(out / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    losses = [float(r["train_loss"]) for r in rows]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), "the training loss falls"
    assert all(r["val_psnr"] for r in rows if int(r["step"]) % 5 == 0)
    assert (out / "loss.png").stat().st_size > 1000

    model, training = load_model(str(out / "model.pt"))
    assert training["steps"] > 0 and training["config"]["workers"] == 2
    clean = smooth_image(70, 90, seed=42)
    degraded = jpeg.roundtrip(clean, 10)
    restored = restore_pixels(model, degraded)
    assert restored.shape == clean.shape and restored.dtype == np.uint8


def _write(path, table):
    path.mkdir(parents=True)
    pq.write_table(table, path / "part.parquet")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "no train/ dataset"),
        (lambda root: [_write(root / s, pa.table({"x": [1, 2]})) for s in ("train", "val")], "without the 'compressed' column"),
        (lambda root: [_write(root / s, pa.table({"compressed": pa.array([b"a" * 1000], pa.binary(1000)), "original": pa.array([b"a" * 1000], pa.binary(1000))})) for s in ("train", "val")], "not a square"),
        (lambda root: [_write(root / s, pa.table({"compressed": pa.array([], pa.binary(1024)), "original": pa.array([], pa.binary(1024))})) for s in ("train", "val")], "empty"),
    ],
)
def test_bad_data_is_refused_before_any_worker(tmp_path, make, message):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    cfg = TrainConfig(data=str(root), output=str(tmp_path / "out"))
    with pytest.raises(DataError, match=message):
        run_train(cfg)


def test_wrong_patch_size_is_refused(tiny_data, tmp_path):
    cfg = TrainConfig(data=str(tiny_data), output=str(tmp_path / "out"), patch_size=48)
    with pytest.raises(DataError, match="patches are 32x32, but --patch-size 48"):
        inspect_data(cfg, *resolve(cfg.data))


def test_diverging_loss_stops_with_a_clear_error(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--output", str(out), "--steps", "60", "--batch-size", "16", "--lr", "1e30",
            "--checkpoint-every", "1", "--val-every", "1000", "--no-residual", "--max-failures", "0"]
    code, log = run_job("train.py", args, tmp_path / "nan.log")
    assert code != 0
    assert "NaN/inf" in log and "last good checkpoint" in log
    assert list((out / "train").glob("checkpoint_*")), "the last good checkpoint stays"


def test_init_from_a_model_file_adds_the_quality_input_and_keeps_the_weights(tiny_data, tmp_path):
    """--init-from: the file's architecture and weights; --quality-input adds FiLM, starting as
    the identity, so the first step starts exactly where the file's model was."""
    import torch

    from carray.model import build_model, save_model

    torch.manual_seed(0)
    base = build_model("unshuffled-cnn", channels=1, blocks=1, width=8)
    for p in base.parameters():
        p.data.normal_(0, 0.05)
    save_model(base, str(tmp_path / "base.pt"), {"note": "base"})
    summary = run_train(TrainConfig(
        data=str(tiny_data), output=str(tmp_path / "run"), init_from=str(tmp_path / "base.pt"), quality_input=True,
        steps=2, batch_size=8, lr=1e-9, val_every=1, checkpoint_every=1, val_patches=16,
    ))
    model, training = load_model(summary["model"])
    assert model.arch == "unshuffled-cnn" and model.args["blocks"] == 1 and model.args["quality_input"]
    assert training["init_from"]["file"].endswith("base.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # lr 1e-9: the fine-tuned model is still the file's model at any quality
        assert torch.allclose(model(x, torch.tensor([10.0])), base.eval()(x), atol=1e-4)


def test_coding_input_trains_on_varied_chroma_and_is_refused_on_gray_data(tiny_data, tmp_path):
    """prep --vary-chroma writes the chroma coding; train --coding-input reads it (train batches and
    the val sample), grows a quality model's FiLM and exports a network that takes (n, 3) codings."""
    import torch

    from carray.model import build_model, save_model
    from support.images import png_bytes

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"c{i}.png").write_bytes(png_bytes(smooth_image(64, 64, color=True, seed=i)))
    run_prep(PrepConfig(input=str(images), output=str(tmp_path / "data"), quality=("20", "40"), color=True, vary_chroma=1.0,
                        split="50/50/0", stride=32))
    base = build_model("unshuffled-cnn", channels=3, blocks=1, width=8, quality_input=True)
    with torch.no_grad():
        base.out.weight.normal_(0, 0.05)  # a zero output layer (a fresh network) gives the FiLM no gradient
    save_model(base, str(tmp_path / "base.pt"), {"note": "base"})
    cfg = dict(output=str(tmp_path / "run"), init_from=str(tmp_path / "base.pt"), coding_input=True, steps=2, batch_size=4,
               val_every=1, checkpoint_every=1, val_patches=8, train_only=("film.chroma",))
    with pytest.raises(OptionError, match="--train-only film.chroma.9 matches no weight.*modules: blocks.0, film.chroma, film.net, inp, out"):
        run_train(TrainConfig(data=str(tmp_path / "data"), **{**cfg, "train_only": ("film.chroma.9",)}))
    summary = run_train(TrainConfig(data=str(tmp_path / "data"), **cfg))
    model, _ = load_model(summary["model"])
    assert model.takes_coding and model.args["coding_input"]
    # --train-only film.chroma: only the chroma coding's MLP learnt; the rest is the base model's.
    learnt = model.state_dict()
    assert all(torch.equal(learnt[name], value) for name, value in base.state_dict().items())
    assert learnt["film.chroma.4.weight"].abs().sum() > 0
    with torch.no_grad():
        assert model(torch.rand(2, 3, 16, 16), torch.tensor([[20.0, 50, 0], [40, 40, 2]])).shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match="gray patches"):
        run_train(TrainConfig(data=str(tiny_data), **{**cfg, "output": str(tmp_path / "gray")}))
    with pytest.raises(OptionError, match="--vary-chroma"):
        run_prep(PrepConfig(input=str(images), output=str(tmp_path / "bad"), vary_chroma=0.5))  # gray prep: no chroma


def test_unregistered_checkpoint_folders_are_removed_from_a_bucket(s3_server, bucket):
    import pyarrow.fs as pafs
    from ray.train import Checkpoint, Result

    from carray.train import remove_unregistered_checkpoints

    _, name = bucket
    fs = s3_server.filesystem()
    run = f"{name}/runs/arcnn/train"
    folders = ["checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000", "checkpoint_2026-01-01_00-00-03.000000"]
    for folder in folders:
        with fs.open_output_stream(f"{run}/{folder}/state.pt") as f:
            f.write(b"state")
    with fs.open_output_stream(f"{run}/checkpoint_manager_snapshot.json") as f:
        f.write(b"{}")
    best, latest, _orphan = (Checkpoint(f"{run}/{folder}", filesystem=fs) for folder in folders)
    result = Result(metrics={}, checkpoint=latest, error=None, path=run, metrics_dataframe=None, best_checkpoints=[(best, {}), (latest, {})])

    assert remove_unregistered_checkpoints(fs, run, result) == [folders[2]]
    left = {info.path.rsplit("/", 1)[1] for info in fs.get_file_info(pafs.FileSelector(run))}
    assert left == {folders[0], folders[1], "checkpoint_manager_snapshot.json"}


def test_a_resumed_optimizer_keeps_its_state_on_the_models_device():
    # A GPU run resumed with Adam's moments on the CPU and failed at its first step ("found at least
    # two devices"). No GPU here: the "meta" device stands in for it (any device but the CPU would).
    import torch

    from carray.model import build_model
    from carray.train import optimizer_on_device

    model = build_model("arcnn")
    first = optimizer_on_device(model, 1e-3)
    model(torch.rand(2, 1, 16, 16)).mean().backward()
    first.step()
    saved = first.state_dict()

    moved = build_model("arcnn").to("meta")
    resumed = optimizer_on_device(moved, 1e-3, saved)
    moments = [value for state in resumed.state.values() for key, value in state.items() if key != "step"]
    assert moments and all(m.device.type == "meta" for m in moments)
    assert resumed.param_groups[0]["lr"] == 1e-3


def test_the_conditioning_can_learn_faster_than_the_convolutions_and_a_resume_keeps_its_groups():
    import torch

    from carray.model import build_model
    from carray.train import optimizer_on_device

    model = build_model("unshuffled-cnn", channels=3, blocks=1, width=8, coding_input=True)
    optimizer = optimizer_on_device(model, 1e-4, film_lr_scale=10)
    convs, film = optimizer.param_groups
    assert {id(p) for p in film["params"]} == {id(p) for p in model.film.parameters()}
    assert (convs["lr"], film["lr"], film["scale"]) == (1e-4, pytest.approx(1e-3), 10)
    model(torch.rand(1, 3, 16, 16), torch.tensor([[20.0, 40, 0]])).mean().backward()
    optimizer.step()
    resumed = optimizer_on_device(model, 1e-4, optimizer.state_dict(), 10)
    assert [g["scale"] for g in resumed.param_groups] == [1.0, 10] and len(resumed.state) == len(optimizer.state)
    assert len(optimizer_on_device(build_model("arcnn"), 1e-4, film_lr_scale=10).param_groups) == 1  # nothing to scale
    with pytest.raises(OptionError, match="--film-lr-scale"):
        TrainConfig(data="d", output="o", film_lr_scale=0).check()


def test_warmup_raises_the_learning_rate_linearly_then_follows_the_schedule():
    from carray.train import learning_rate

    assert learning_rate(1e-3, "cosine", 0, 100, warmup=10) == pytest.approx(learning_rate(1e-3, "cosine", 0, 100) / 10)
    assert learning_rate(1e-3, "cosine", 9, 100, warmup=10) == pytest.approx(learning_rate(1e-3, "cosine", 9, 100))
    assert learning_rate(1e-3, "constant", 50, 100, warmup=10) == 1e-3
