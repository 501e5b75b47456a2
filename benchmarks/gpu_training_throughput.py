"""Proxy-training throughput on a GPU: images/s, GPU utilisation and memory per preset, batch size and speed
setting (issue 18, part 3). Run by benchmarks/gpu_check.sh; ``--device cpu`` runs the same code path on a CPU.

For each preset (nano presets at 160 px; ``--paper`` adds ``--paper-presets``, default yolor-elan, at 640) and
batch size, ``ProxyTrainer.fit`` over ``--steps`` steps with the speed settings off (``amp``, ``channels_last``,
``fused_optimizer``, ``cudnn_benchmark`` false) and/or on (``--settings``; the defaults: fp16 autocast with
gradient scaling, fused AdamW, cuDNN autotuning, channels-last where it helps (not on CUDA); pinned host batches
and loader workers are ``auto``, i.e. on for CUDA). The GPU utilisation is the mean of ``nvidia-smi`` samples
every 100 ms during the fit ("n/a" without nvidia-smi); memory is torch's peak allocation. The batch that fills
the card is where images/s stops growing.

    .venv/bin/python benchmarks/gpu_training_throughput.py [--device cuda] [--batches 16 64 128] [--steps 60]
        [--presets yolor-elan-nano ...] [--paper [--paper-presets yolor-elan ...] [--paper-batches 16 32]]
        [--settings off|on|both] [--parse-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import threading
from datetime import datetime, timezone

import torch

from gpnas.errors import GpnasError
from gpnas.experiments import stages
from gpnas.search_space.presets import get_preset
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.proxy import ProxyTrainer
from gpnas.trainers.train_config import TrainConfig

NANO = ("yolor-v3-nano", "yolor-prn-nano", "yolor-csp-nano", "yolor-elan-nano")
OFF = {"amp": False, "channels_last": False, "fused_optimizer": False, "cudnn_benchmark": False}


class UtilisationSampler:
    """Mean GPU utilisation (%) from ``nvidia-smi`` sampled every 100 ms while in the ``with`` block."""

    def __init__(self, index: int = 0) -> None:
        self.index, self.samples = index, []  # type: ignore[var-annotated]
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilisationSampler:
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line.strip()))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def mean(self) -> str:
        return f"{statistics.mean(self.samples):.0f}%" if self.samples else "n/a"


def run(name: str, img: int, batch: int, knobs: dict[str, bool], device: str, steps: int,
        data: ProxyData) -> tuple[float, str, float]:
    config = dataclasses.replace(TrainConfig(device=device, steps=steps, batch_size=batch, max_seconds=None),
                                 **knobs)
    model = stages.build(get_preset(name).replace(img_size=img, num_classes=data.num_classes), seed=0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with UtilisationSampler() as util:
        fit = ProxyTrainer(config).fit(model, data)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return fit.images_per_second, util.mean(), memory


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", nargs="+", default=list(NANO), help="trained at 160 px")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--paper", action="store_true", help="also the --paper-presets at 640")
    parser.add_argument("--paper-presets", nargs="+", default=["yolor-elan"])
    parser.add_argument("--paper-batches", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--settings", choices=["off", "on", "both"], default="both",
                        help="the speed settings: off, on (AMP, fused AdamW, cuDNN autotuning) or both")
    parser.add_argument("--parse-only", action="store_true", help="check the arguments and exit")
    args = parser.parse_args(argv)
    try:
        for name in (*args.presets, *args.paper_presets):
            get_preset(name)
    except GpnasError as err:
        parser.error(str(err))
    return args


def main() -> None:
    args = parse()
    jobs = [(p, 160, b) for p in args.presets for b in args.batches]
    if args.paper:
        jobs += [(p, 640, b) for p in args.paper_presets for b in args.paper_batches]
    settings = [(name, knobs) for name, knobs in (("off", OFF), ("on", {})) if args.settings in (name, "both")]
    if args.parse_only:
        print(f"arguments accepted: {len(jobs)} (preset, size, batch) × {[name for name, _ in settings]}")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: run with --device cpu, or on a GPU machine")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"# GPU training throughput · {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {name} · "
          f"torch {torch.__version__} · {args.steps} steps per fit (first steps included)")
    print(f"{'preset':16s} {'img':>4s} {'batch':>5s} {'speed':5s} {'img/s':>8s} {'GPU util':>8s} {'mem GiB':>8s}")
    datasets: dict[int, ProxyData] = {}
    for preset, img, batch in jobs:
        data = datasets.setdefault(img, ProxyData.digits(img_size=img))
        for setting, knobs in settings:
            try:
                ips, util, mem = run(preset, img, batch, knobs, args.device, args.steps, data)
            except torch.OutOfMemoryError:
                print(f"{preset:16s} {img:4d} {batch:5d} {setting:5s} out of memory")
                torch.cuda.empty_cache()
                continue
            print(f"{preset:16s} {img:4d} {batch:5d} {setting:5s} {ips:8.1f} {util:>8s} {mem:8.2f}", flush=True)


if __name__ == "__main__":
    main()
