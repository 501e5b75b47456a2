"""How gpnas meets bad input: a table of bad configs, command lines, data files, specs and operations, each run
through the CLI as a user types it. Every one must end with exit code 2, no Python traceback, and a message
that names the key, file or value (the ``needle``). Prints one line per case and the count handled clearly.

    python benchmarks/bad_inputs.py [--only SUBSTRING] [--jobs 2]

Nothing here trains: every case fails before training starts (the two that reach Ray fail before a trial).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

GPNAS = [sys.executable, "-m", "gpnas.experiments.cli"]
DEMO = "name: bad\nbudget: {num_trials: 1}\ndata: {n_train: 24, n_val: 8}\ntrain: {steps: 1, batch_size: 8}\n"


@dataclass
class Case:
    area: str
    what: str
    args: list[str]
    needle: str
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative path -> content, written first
    setup: Callable[[Path], None] | None = None


def _search(*overrides: str, config: str = "c.yaml", body: str = DEMO) -> dict:
    return {"args": ["search", "--config", config, "--no-mlflow", *overrides], "files": {"c.yaml": body}}


def _coco(mutate: Callable[[dict], None], n: int = 1) -> dict[str, str | bytes]:
    """A tiny COCO set of ``n`` 32×32 images (one box each), changed by ``mutate``."""
    import io

    from PIL import Image

    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in range(1, n + 1)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10]}
                            for i in range(1, n + 1)],
            "categories": [{"id": 1, "name": "x"}]}
    mutate(data)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    return {"ann.json": json.dumps(data), **{f"img/{i}.png": buf.getvalue() for i in range(1, n + 1)}}


def _train_on(mutate: Callable[[dict], None], needle: str, what: str) -> Case:
    return Case("data", what, ["train", "yolor-csp-nano", "--data", "ann.json", "--images", "img", "--steps", "1"],
                needle, _coco(mutate))


def _config_cases() -> list[Case]:
    s = _search
    rows: list[tuple[str, dict, str]] = [
        ("config file missing", {"args": ["search", "--config", "nope.yaml"]}, "nope.yaml"),
        ("empty config file", s(body=""), "empty"),
        ("comments-only config file", s(body="# nothing\n"), "empty"),
        ("YAML syntax error", s(body="name: [oops\n"), "line"),
        ("top level is a list", s(body="- a\n- b\n"), "mapping"),
        ("binary config file", {"args": ["search", "--config", "c.yaml"], "files": {"c.yaml": b"\xff\xfe\x00\x81"}},
         "c.yaml"),
        ("config file of 2 MB", s(body="# " + "x" * 2_000_000 + "\n" + DEMO), "MiB"),
        ("unknown top-level key", s("nmae=x"), "nmae"),
        ("unknown train key", s("train.lrr=0.1"), "did you mean 'lr'"),
        ("unknown loss-gain key", s("train.hyp.clss=1"), "did you mean 'cls'"),
        ("negative learning rate", s("train.lr=-1"), "train.lr"),
        ("negative seconds budget", s("train.seconds=-1"), "train.seconds"),
        ("batch size 0", s("train.batch_size=0"), "batch_size"),
        ("zero steps", s("train.steps=0"), "train.steps"),
        ("zero wall-clock cap", s("train.max_seconds=0"), "max_seconds"),
        ("unknown train device", s("train.device=banana"), "banana"),
        ("unknown optimizer", s("train.optimizer=lion"), "lion"),
        ("warm-up fraction 2", s("train.warmup_fraction=2"), "warmup_fraction"),
        ("latency repeats 0", s("latency.repeats=0"), "latency.repeats"),
        ("unknown latency dtype", s("latency.dtype=fp8"), "fp8"),
        ("unknown latency device", s("latency.device=banana"), "banana"),
        ("fp16 latency on CPU", s("latency.dtype=fp16"), "fp16"),
        ("negative CPUs per trial", s("budget.cpu=-1"), "budget.cpu"),
        ("zero trials", s("budget.num_trials=0"), "num_trials"),
        ("zero concurrency", s("budget.max_concurrent=0"), "max_concurrent"),
        ("negative GPUs", s("budget.gpu=-1"), "budget.gpu"),
        ("unknown sampler", s("sampler.type=cmaes"), "sampler.type"),
        ("unknown objective", s("objectives=[ap, speed]"), "speed"),
        ("no objectives", s("objectives=[]"), "objectives"),
        ("repeated objective", s("objectives=[ap, ap]"), "objectives"),
        ("latency objective without latency", s("latency.enabled=false"), "latency.enabled"),
        ("name with a slash", s("name=a/b"), "a/b"),
        ("schema version from the future", s("schema_version=99"), "schema_version"),
        ("coco data without paths", s("data.kind=coco"), "data.train_ann"),
        ("coco data whose files are missing", s("data.kind=coco", "data.train_ann=/no/t.json",
                                                "data.train_images=/no/t", "data.val_ann=/no/v.json",
                                                "data.val_images=/no/v"), "/no/"),
        ("unknown base preset", s("space.base=yolor-nope"), "yolor-nope"),
        ("unknown gene", s("space.genes.colour.choices=[red]"), "colour"),
        ("gene range low > high", s("space.genes.width_multiple.range=[2, 1]"), "[2.0, 1.0]"),
        ("gene with choices and range", s("space.genes.block.choices=[csp]", "space.genes.block.range=[1, 2]"),
         "exactly one"),
        ("gene with no choices", s("space.genes.block.choices=[]"), "empty"),
        ("enqueued preset outside the space", s("space.genes.block.choices=[csp]", "enqueue=[yolor-elan-nano]"),
         "yolor-elan-nano"),
        ("override without =", s("train.steps"), "key.sub=value"),
        ("override into a value", s("name.x=1"), "name"),
        ("CUDA training without a GPU budget", s("train.device=cuda"), "budget.gpu"),
        ("non-numeric constraint", s("constraints.max_gflops=abc"), "max_gflops"),
        ("storage root is a file", {**s("storage.root=afile"), "files": {"c.yaml": DEMO, "afile": "x"}},
         "afile"),
        ("dead cluster address", s("--address", "127.0.0.1:9"), "127.0.0.1:9"),
        ("GPU budget on a machine without one", s("train.device=cuda", "budget.gpu=1"), "budget.gpu"),
    ]
    return [Case("config", what, spec["args"], needle, spec.get("files", {})) for what, spec, needle in rows]


def _cli_cases() -> list[Case]:
    rows = [
        ("unknown command", ["frobnicate"], "frobnicate"),
        ("search without --config", ["search"], "--config"),
        ("non-numeric --img", ["describe", "yolor-csp-nano", "--img", "abc"], "'--img'"),
        ("unknown preset", ["describe", "yolor-nope"], "yolor-nope"),
        ("missing spec file", ["describe", "/no/such.yaml"], "/no/such.yaml"),
        ("--img not a multiple of 32", ["describe", "yolor-csp-nano", "--img", "33"], "33"),
        ("unknown head", ["describe", "yolor-csp-nano", "--head", "banana"], "banana"),
        ("fp16 latency on CPU", ["latency", "yolor-csp-nano", "--dtype", "fp16"], "fp16"),
        ("unknown latency device", ["latency", "yolor-csp-nano", "--device", "banana"], "banana"),
        ("zero training steps", ["train", "yolor-csp-nano", "--steps", "0"], "steps"),
        ("missing annotation file", ["train", "yolor-csp-nano", "--data", "/no/such.json", "--images", "."],
         "/no/such.json"),
        ("status of a missing search", ["status", "/no/such"], "/no/such"),
        ("pareto of a missing search", ["pareto", "/no/such"], "/no/such"),
        ("export of a missing search", ["export", "/no/such"], "/no/such"),
        ("resume of a missing search", ["resume", "/no/such"], "/no/such"),
        ("fidelity of nothing", ["fidelity"], "--panel"),
        ("ui of a missing search", ["ui", "/no/such"], "/no/such"),
    ]
    return [Case("cli", what, args, needle) for what, args, needle in rows]


def _option_cases() -> list[Case]:
    """Options are checked as the command line is read: ranges, exclusive options, a single value given twice.
    The search named here does not exist: the option is refused before the search is read."""
    train = ["train", "yolor-csp-nano"]
    rows: list[tuple[str, str, list[str], str]] = [
        ("ranges", "port out of range", ["ui", "s", "--port", "99999"], "--port 99999"),
        ("ranges", "port 0", ["ui", "s", "--port", "0"], "--port 0"),
        ("ranges", "ONNX opset below the exporter's", ["export", "s", "--opset", "3"], "--opset 3"),
        ("ranges", "ONNX opset above the exporter's", ["export", "s", "--opset", "99"], "--opset 99"),
        ("ranges", "export batch 0", ["export", "s", "--batch", "0"], "--batch 0"),
        ("ranges", "negative seconds budget", [*train, "--seconds", "-1"], "--seconds -1"),
        ("ranges", "batch size 0", [*train, "--batch-size", "0"], "--batch-size 0"),
        ("ranges", "learning rate 0", [*train, "--lr", "0"], "--lr 0"),
        ("ranges", "negative seed", [*train, "--seed", "-1"], "--seed -1"),
        ("ranges", "latency threads 0", ["latency", "yolor-csp-nano", "--threads", "0"], "--threads 0"),
        ("ranges", "latency repeats 0", ["latency", "yolor-csp-nano", "--repeats", "0"], "--repeats 0"),
        ("ranges", "refine workers 0", ["refine", "s", "--workers", "0"], "--workers 0"),
        ("ranges", "fidelity factor below 1", ["fidelity", "--panel", "nano", "--factor", "0.5"], "--factor 0.5"),
        ("ranges", "unknown analyze target", ["analyze", "s", "--target", "best"], "--target best"),
        ("conflicts", "two training budgets", [*train, "--steps", "2", "--epochs", "1"], "--steps and --epochs"),
        ("conflicts", "three training budgets", [*train, "--steps", "2", "--epochs", "1", "--seconds", "9"],
         "--steps, --epochs and --seconds"),
        ("conflicts", "proxy budget with full training", [*train, "--out", "x", "--steps", "3"], "--steps"),
        ("conflicts", "--resume without --out", [*train, "--resume"], "--resume"),
        ("conflicts", "opset 13 with --dynamic-size", ["export", "s", "--dynamic-size", "--opset", "13"],
         "--opset 13 with --dynamic-size"),
        ("repeats", "--opset given twice", ["export", "s", "--opset", "13", "--opset", "18"], "--opset is given 2"),
        ("repeats", "--port given twice", ["ui", "s", "--port", "5000", "--port", "5001"], "--port is given 2"),
        ("repeats", "--config given twice", ["search", "-c", "a.yaml", "--config", "b.yaml"], "--config is given 2"),
        ("repeats", "--steps given twice", [*train, "--steps", "1", "--steps", "2"], "--steps is given 2"),
        ("repeats", "repeated --format, one unknown", ["export", "s", "--format", "onnx", "--format", "banana"],
         "--format banana"),
    ]
    return [Case(area, what, args, needle) for area, what, args, needle in rows]


def _duplicate_key_cases() -> list[Case]:
    def saved(tmp: Path) -> None:
        (tmp / "runs" / "bad").mkdir(parents=True)
        (tmp / "runs" / "bad" / "config.yaml").write_text(DEMO + "budget: {num_trials: 2}\n")

    twice = DEMO + "budget: {num_trials: 2}\n"
    nested = DEMO.replace("train: {steps: 1, batch_size: 8}", "train:\n  steps: 1\n  batch_size: 8\n  steps: 2")
    return [
        Case("yaml", "search config with two budget sections", _search(body=twice)["args"], "'budget' is given twice",
             {"c.yaml": twice}),
        Case("yaml", "search config with a key twice in a section", _search(body=nested)["args"],
             "'steps' is given twice", {"c.yaml": nested}),
        Case("yaml", "override with a key twice", _search("space.genes.block={choices: [csp], choices: [elan]}")
             ["args"], "'choices' is given twice", {"c.yaml": DEMO}),
        Case("yaml", "spec YAML with a key twice", ["describe", "s.yaml"], "'block' is given twice",
             {"s.yaml": "name: mine\nblock: csp\nblock: elan\n"}),
        Case("yaml", "saved search config with a key twice", ["status", "runs/bad"], "config.yaml", setup=saved),
    ]


def _spec_cases() -> list[Case]:
    base = "name: mine\nblock: csp\n"
    rows = [
        ("unknown spec key", "colour: red\n", "colour"),
        ("negative width multiple", "width_multiple: -1\n", "width_multiple"),
        ("spec not a mapping", None, "mapping"),
        ("spec YAML syntax error", "block: [oops\n", "line"),
        ("model far too large to build", "width_multiple: 64.0\ndepth_multiple: 4.0\n", "param"),
    ]
    cases = []
    for what, extra, needle in rows:
        text = "- just\n- a list\n" if extra is None else base + extra
        cases.append(Case("spec", what, ["describe", "s.yaml"], needle, {"s.yaml": text}))
    return cases


def _data_cases() -> list[Case]:
    def drop_images(d: dict) -> None:
        del d["images"]

    def str_bbox(d: dict) -> None:
        d["annotations"][0]["bbox"] = ["2", "2", "10", "10"]

    def dup_images(d: dict) -> None:
        d["images"].append(dict(d["images"][0]))

    def escape(d: dict) -> None:
        d["images"][0]["file_name"] = "../1.png"

    def no_images(d: dict) -> None:
        d["images"], d["annotations"] = [], []

    def no_annotations(d: dict) -> None:
        d["annotations"] = []

    def str_width(d: dict) -> None:
        d["images"][0]["width"] = "32"

    cases = [
        _train_on(drop_images, "images", "annotation file without 'images'"),
        _train_on(str_bbox, "bbox", "bbox of strings"),
        _train_on(dup_images, "duplicate", "duplicate image ids"),
        _train_on(escape, "../1.png", "file_name outside the images folder"),
        _train_on(no_images, "images", "empty images list"),
        _train_on(no_annotations, "annotations", "empty annotations list"),
        _train_on(str_width, "width", "width given as a string"),
        Case("data", "annotation file is not JSON", ["train", "yolor-csp-nano", "--data", "ann.json", "--images",
                                                      "img", "--steps", "1"], "ann.json", {"ann.json": "{oops"}),
    ]
    broken = _coco(lambda d: None, n=17)  # more than one batch of 16, so the first batch reads the bad file
    broken["img/5.png"] = b"this is not a PNG"
    cases.append(Case("data", "image file that is not an image", ["train", "yolor-csp-nano", "--data", "ann.json",
                                                                    "--images", "img", "--steps", "1"], "5.png",
                      broken))
    return cases


def _operation_cases() -> list[Case]:
    def corrupt(tmp: Path) -> None:
        (tmp / "runs" / "bad").mkdir(parents=True)
        (tmp / "runs" / "bad" / "config.yaml").write_text(DEMO)
        (tmp / "runs" / "bad" / "study.db").write_bytes(b"not a database" * 200)

    def no_study(tmp: Path) -> None:
        (tmp / "runs" / "bad").mkdir(parents=True)
        (tmp / "runs" / "bad" / "config.yaml").write_text(DEMO)

    return [
        Case("operations", "status of a corrupt study", ["status", "runs/bad"], "study.db", setup=corrupt),
        Case("operations", "pareto of a folder whose start failed", ["pareto", "runs/bad"], "no study",
             setup=no_study),
        Case("operations", "export into a file", ["export", "runs/bad", "--out", "afile"], "afile",
             {"afile": "x"}, setup=no_study),
    ]


def all_cases() -> list[Case]:
    return (_config_cases() + _cli_cases() + _option_cases() + _duplicate_key_cases() + _spec_cases() + _data_cases()
            + _operation_cases())


def run_case(case: Case) -> tuple[Case, bool, str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, content in case.files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        if case.setup:
            case.setup(root)
        env = {**os.environ, "GPNAS_CACHE": os.environ.get("GPNAS_CACHE", str(Path.home() / ".cache" / "gpnas")),
               "COLUMNS": "200"}
        start = time.perf_counter()
        out = subprocess.run([*GPNAS, *case.args], capture_output=True, text=True, cwd=root, env=env, timeout=300)
        seconds = time.perf_counter() - start
    text = out.stdout + out.stderr
    problems = []
    if out.returncode != 2:
        problems.append(f"exit {out.returncode}")
    if "Traceback" in text:
        problems.append("traceback")
    if case.needle not in " ".join(text.split()):
        problems.append(f"message lacks {case.needle!r}")
    last = " ".join(text.strip().splitlines()[-3:])[:160] if text.strip() else "(no output)"
    return case, not problems, "; ".join(problems) or last, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose area or description contains this")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    cases = [c for c in all_cases() if args.only in f"{c.area} {c.what}"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    from gpnas.objectives.latency import cpu_name

    print(f"gpnas bad inputs · {time.strftime('%Y-%m-%d %H:%M')} · commit {commit} · {cpu_name()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()} · {len(cases)} cases", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_case, cases))
    for case, ok, detail, seconds in results:
        print(f"{'ok  ' if ok else 'FAIL'} {case.area:<10} {case.what:<42} {seconds:5.1f}s  {detail}")
    handled = sum(ok for _, ok, _, _ in results)
    by_area: dict[str, list[bool]] = {}
    for case, ok, _, _ in results:
        by_area.setdefault(case.area, []).append(ok)
    print("\n" + " · ".join(f"{area} {sum(v)}/{len(v)}" for area, v in by_area.items()))
    print(f"handled clearly (exit 2, no traceback, names the input): {handled} of {len(results)}")
    sys.exit(0 if handled == len(results) else 1)


if __name__ == "__main__":
    main()
