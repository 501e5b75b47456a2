"""`gpnas train ARCH --out DIR`: a full training, checkpointed every epoch, that a SIGKILL does not disturb — the
resumed run ends with the uninterrupted run's weights, bit for bit — plus its refusals, its best checkpoint,
report and MLflow run, the seeded batch order under set_epoch and DDP sharding, and two processes under torchrun.

Everything runs the command as a user does, on a tiny digits set (48 train / 16 val images at 160 px) and
yolor-v3-nano at width 1/16: an epoch is 6 steps, well under a second.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from searchutil import GPNAS, cli_env, run_cli

from gpnas.search_space.presets import get_preset
from gpnas.trainers.data import AugmentSeeds, RankShard, SeededShuffle

EPOCHS = 4
TRAIN = ["--epochs", str(EPOCHS), "--batch-size", "8", "--lr", "0.01"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    spec = get_preset("yolor-v3-nano").replace(width_multiple=0.0625, name="tiny-v3")
    (root / "tiny.yaml").write_text(spec.to_yaml())
    return root


def _env(work: Path, **extra: str) -> dict[str, str]:
    return cli_env(**{"GPNAS_CACHE": str(work / "cache"), "GPNAS_DIGITS_N_TRAIN": "48", "GPNAS_DIGITS_N_VAL": "16",
                      **extra})


def _gpnas(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(work, "train", *args, env=_env(work, **env))


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def straight(work: Path) -> Path:
    """The uninterrupted run: 4 epochs, no MLflow."""
    proc = _gpnas(work, "tiny.yaml", *TRAIN, "--out", "straight", "--no-mlflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "straight"


@pytest.fixture(scope="module")
def resumed(work: Path) -> tuple[Path, str]:
    """The same run killed (SIGKILL) in epoch 3, once epoch 2's checkpoint is written, then resumed; -> its
    folder and the progress the first process printed."""
    out = work / "killed"
    proc = subprocess.Popen([*GPNAS, "train", "tiny.yaml", *TRAIN, "--out", "killed"], cwd=work, env=_env(work),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = []
    assert proc.stdout is not None
    for line in proc.stdout:  # the progress line of an epoch comes after its checkpoint is written
        printed.append(line)
        if line.startswith(f"epoch 2/{EPOCHS}"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(printed)
    assert _load(out / "last.pt")["epoch"] == 2
    assert not (out / "report.json").exists()
    again = _gpnas(work, "tiny.yaml", "--out", "killed", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout and f"epoch 3/{EPOCHS}" in again.stdout, again.stdout
    return out, "".join(printed)


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_with_the_uninterrupted_weights(straight: Path,
                                                                      resumed: tuple[Path, str]) -> None:
    out, printed = resumed
    assert "loss" in printed and "val AP" in printed and "ETA" in printed
    a, b = _load(straight / "last.pt"), _load(out / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS and a["step"] == b["step"] == EPOCHS * 6
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        unequal = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert unequal == [], f"{part}: {unequal[:5]}"
    assert a["ema_updates"] == b["ema_updates"] == EPOCHS * 6
    assert [h["ap"] for h in a["history"]] == [h["ap"] for h in b["history"]]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    report_a = json.loads((straight / "report.json").read_text())
    report_b = json.loads((out / "report.json").read_text())
    assert report_a["ap"] == report_b["ap"] and report_a["best_epoch"] == report_b["best_epoch"]


@pytest.mark.slow
def test_best_checkpoint_report_and_mlflow_run(resumed: tuple[Path, str]) -> None:
    from mlflow.tracking import MlflowClient

    out, _ = resumed
    last, best = _load(out / "last.pt"), _load(out / "best.pt")
    aps = [h["ap"] for h in last["history"]]  # AP stays near 0 after 24 steps: see the scripted test below
    assert len(aps) == EPOCHS
    assert best["epoch"] == aps.index(max(aps)) + 1 == last["best_epoch"]
    assert best["metrics"]["ap"] == max(aps) == last["best_ap"]
    if best["epoch"] == EPOCHS:  # the last epoch's EMA is in last.pt too
        assert all(torch.equal(best["model"][k], v) for k, v in last["ema"].items())
    report = json.loads((out / "report.json").read_text())
    assert report["ap"] == max(aps)  # best.pt scored again on the whole val split
    for key in ("ap50", "ap75", "ap_small", "ap_medium", "ap_large"):
        assert report[key] == best["metrics"][key]
    assert report["images"] == 16 and report["epochs"] == EPOCHS and report["seconds"] > 0
    assert "| ap |" in (out / "report.md").read_text()
    for name in ("spec.yaml", "train_config.json"):
        assert (out / name).is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("train-tiny-v3")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert run_id == last["mlflow"]["run_id"]
    history = client.get_metric_history(run_id, "epoch_ap")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == aps
    assert runs[0].data.params["train.batch_size"] == "8" and runs[0].data.params["block"] == "residual"
    assert runs[0].data.metrics["ap"] == report["ap"]
    assert {"report.json", "report.md", "best.pt"} <= {f.path for f in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_best_checkpoint_holds_the_best_epochs_ema_weights(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With scripted val APs 0.1, 0.3, 0.2: best.pt is epoch 2's EMA copy, and the report scores that copy."""
    from gpnas.experiments.config import DataConfig
    from gpnas.experiments.full_training import FullTraining, FullTrainRequest, full_train
    from gpnas.objectives.accuracy import METRIC_KEYS
    from gpnas.search_space.spec import load_spec

    scored: list[dict[str, torch.Tensor]] = []

    def scripted(self: FullTraining, model: torch.nn.Module) -> dict[str, float]:
        assert model is not self.model  # the EMA copy (or the reloaded best.pt), never the trained weights
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return dict.fromkeys(METRIC_KEYS, (0.1, 0.3, 0.2, -1.0)[len(scored) - 1])

    monkeypatch.setenv("GPNAS_CACHE", str(work / "cache"))
    monkeypatch.setattr(FullTraining, "_evaluate", scripted)
    lines: list[str] = []
    request = FullTrainRequest(load_spec(work / "tiny.yaml"), DataConfig(kind="digits", n_train=48, n_val=16),
                               work / "scripted", epochs=3, batch_size=8, mlflow=False)
    report = full_train(request, log=lines.append)
    assert report is not None and report["best_epoch"] == 2 and report["ap"] == -1.0  # the final scoring's value
    best = _load(work / "scripted" / "best.pt")
    assert best["epoch"] == 2 and best["metrics"]["ap"] == 0.3
    for weights in (best["model"], scored[3]):
        assert all(torch.equal(weights[k], v) for k, v in scored[1].items())
    assert not all(torch.equal(scored[1][k], v) for k, v in scored[2].items())  # epoch 3 moved on
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]


def _refused(proc: subprocess.Popen[str], *says: str) -> None:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    for text in says:
        assert text in stderr, (text, stderr)


@pytest.mark.slow
def test_refusals_name_the_file_and_the_fix(work: Path, straight: Path) -> None:
    def gpnas(*args: str, **env: str) -> subprocess.Popen[str]:  # all at once: each is mostly start-up time
        return subprocess.Popen([*GPNAS, "train", *args], cwd=work, env=_env(work, **env), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    checks = [
        (gpnas("tiny.yaml", "--out", "nothing-here", "--resume"), "nothing-here/last.pt not found", "without --resume"),
        (gpnas("tiny.yaml", *TRAIN, "--out", "straight"), "already holds a training run", "--resume"),
        (gpnas("yolor-v3-nano", "--out", "straight", "--resume"), "straight/last.pt was trained from architecture",
         "straight/spec.yaml"),
        (gpnas("tiny.yaml", "--out", "straight", "--resume", "--batch-size", "16"), "--batch-size 16 (the run: 8)"),
        (gpnas("tiny.yaml", "--out", "straight", "--resume", GPNAS_DIGITS_N_TRAIN="40"), "other data", "train"),
        (gpnas("tiny.yaml", "--out", "x", "--steps", "3"), "--steps", "only for proxy training"),
        (gpnas("tiny.yaml", "--epochs", "1", "--resume"), "--resume", "--out"),
    ]
    for proc, *says in checks:
        _refused(proc, *says)
    assert not (work / "nothing-here" / "spec.yaml").exists() and not (work / "x").exists()


def test_set_epoch_gives_each_epoch_its_order_whatever_came_before() -> None:
    def passes(sampler: Any, n: int) -> list[list[Any]]:
        return [list(sampler) for _ in range(n)]

    straight = passes(AugmentSeeds(SeededShuffle(20, seed=5), seed=5), 4)
    fresh = AugmentSeeds(SeededShuffle(20, seed=5), seed=5)
    fresh.set_epoch(2)  # a resumed run: a new sampler put at epoch 2
    assert passes(fresh, 2) == straight[2:]
    cut = AugmentSeeds(SeededShuffle(20, seed=5), seed=5)
    next(iter(cut))  # a pass cut short (a run killed mid-epoch), then set back
    cut.set_epoch(1)
    assert passes(cut, 3) == straight[1:]
    plain = SeededShuffle(20, seed=5)
    assert passes(plain, 2) == [[i for i, _ in p] for p in straight[:2]]  # set_epoch never called: as before


def test_rank_shards_together_are_the_single_process_batches() -> None:
    batch, world = 8, 2
    single = [item for item in AugmentSeeds(SeededShuffle(21, seed=1), seed=1)][: 21 // batch * batch]
    shards = []
    for rank in range(world):
        shard = RankShard(AugmentSeeds(SeededShuffle(21, seed=1), seed=1), rank=rank, world=world, batch_size=batch)
        items = list(shard)
        assert len(items) == len(shard) == 21 // batch * batch // world
        shards.append([items[i:i + batch // world] for i in range(0, len(items), batch // world)])
    for k in range(21 // batch):
        together = sorted(item for rank in range(world) for item in shards[rank][k])
        assert together == sorted(single[k * batch:(k + 1) * batch])  # the same images, the same augment seeds
    with pytest.raises(ValueError, match="multiple of 2"):
        RankShard(SeededShuffle(21, seed=1), rank=0, world=2, batch_size=7)


@pytest.mark.slow
def test_two_processes_under_torchrun_on_cpu(work: Path) -> None:
    """DistributedDataParallel over gloo: rank 0 writes one checkpoint of one epoch of 6 global batches."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "gpnas.experiments.cli", "train", "tiny.yaml", "--epochs", "1", "--batch-size", "8", "--out", "ddp",
           "--no-mlflow"]
    proc = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1") == 1  # rank 0 alone prints
    last = _load(work / "ddp" / "last.pt")
    assert last["world_size"] == 2 and last["epoch"] == 1 and last["step"] == 6
    assert json.loads((work / "ddp" / "report.json").read_text())["epochs"] == 1
