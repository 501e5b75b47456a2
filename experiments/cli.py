"""The gpnas command: each subcommand parses, loads, and calls an importable library function (STYLE.md 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gpnas.errors import GpnasError, SearchAborted
from gpnas.experiments import cli_options as opt
from gpnas.experiments.cli_output import add_row, console, print_describe, print_error, print_fidelity, say, table
from gpnas.experiments.cli_output import print_json as _print_json

# Every command is a StrictCommand: options are checked as they are parsed (cli_options), before the command runs.
app = opt.StrictTyper(add_completion=False, no_args_is_help=True, help="Gradient-path NAS for real-time detectors.")


@app.command()
def presets(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List the named architectures (the paper's models and CPU-sized nano versions)."""
    from gpnas.experiments.inspect import list_presets

    rows = list_presets()
    if as_json:
        _print_json(rows)
        return
    tab = table("name", "family", "description", title="gpnas presets")
    for row in rows:
        add_row(tab, row["name"], row["family"], row["description"])
    console.print(tab)


@app.command()
def describe(
    arch: Annotated[str, typer.Argument(help="Preset name or spec YAML file.")],
    img: Annotated[int | None, typer.Option(help="Input size for GFLOPs (default: the spec's).",
                                            callback=opt.img_size)] = None,
    head: Annotated[str | None, typer.Option(help="detect or seg (seg adds the paper's Segment head).",
                                             callback=opt.one_of("detect", "seg"))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    export_spec: Annotated[Path | None, typer.Option(help="Write the YAML that rebuilds this model.")] = None,
    gradient_path: Annotated[bool, typer.Option("--gradient-path", help="Add gradient-path metrics.")] = False,
    layers: Annotated[bool, typer.Option("--layers", help="With --gradient-path: the per-layer table.")] = False,
) -> None:
    """Size and structure of one architecture, in the paper's units (fused, 2×MACs)."""
    from gpnas.experiments.inspect import describe as describe_arch
    from gpnas.experiments.inspect import resolve_arch

    spec = resolve_arch(arch)
    info = describe_arch(spec, img=img, head=head, gradient_path=gradient_path or layers, layers=layers)
    if export_spec is not None:
        from gpnas.search_space.spec import ArchSpec

        final = ArchSpec.from_dict(info["spec"])
        export_spec.parent.mkdir(parents=True, exist_ok=True)
        export_spec.write_text(final.to_yaml())
        info["exported_spec"] = str(export_spec)
    if as_json:
        _print_json(info)
        return
    print_describe(info)


@app.command(cls=opt.strict_command(opt.BUDGETS))
def train(
    arch: Annotated[str, typer.Argument(help="Preset name or spec YAML file.")],
    data: Annotated[str, typer.Option(help="'digits' (bundled) or a COCO annotation JSON.")] = "digits",
    images: Annotated[str | None, typer.Option(help="Images folder for a COCO --data file.")] = None,
    val_data: Annotated[str | None, typer.Option(help="Val annotation JSON (default: --data).")] = None,
    val_images: Annotated[str | None, typer.Option(help="Val images folder (default: --images).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epoch budget (with --out: the run's length).",
                                               callback=opt.at_least(1, "epochs"))] = None,
    seconds: Annotated[float | None, typer.Option(help="Time budget: AP at equal compute (machine-dependent).",
                                                  callback=opt.greater_than(0, "seconds of training"))] = None,
    steps: Annotated[int | None, typer.Option(help="Step budget (default: the search's, if no budget is given; "
                                                   "one of --steps, --epochs, --seconds).",
                                              callback=opt.at_least(1, "optimiser steps"))] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Wall-clock cap; past it the run stops, partial.",
                                                      callback=opt.greater_than(0, "seconds of wall time"))] = None,
    img: Annotated[int | None, typer.Option(help="Training size (default: the spec's).", callback=opt.img_size)]
    = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cpu; with --resume: the run's).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).", callback=opt.at_least(0))] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step, all GPUs together (default 16).",
                                                   callback=opt.at_least(1, "images per step"))] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 0.004).",
                                             callback=opt.greater_than(0))] = None,
    save: Annotated[Path | None, typer.Option(help="Write the trained (EMA) weights here.")] = None,
    out: Annotated[Path | None, typer.Option(help="Full training into this folder: last.pt every epoch, best.pt, "
                                                   "report; MLflow in DIR/mlflow.db.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="With --out: continue the run from DIR/last.pt.")]
    = False,
    tracking_uri: Annotated[str | None, typer.Option(help="With --out: MLflow URI (default: DIR/mlflow.db).")]
    = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="With --out: no MLflow run.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Proxy-train one architecture and report COCO AP, AP50, training seconds and images/s; with --out, train it
    for real: --epochs N, checkpointed every epoch, resumable, multi-GPU under torchrun."""
    from gpnas.experiments.cli_output import err_console, literal, print_train
    from gpnas.experiments.train_one import train_arch

    lines = err_console if as_json else console
    result = train_arch(
        arch, data=data, images=images, val_data=val_data, val_images=val_images, epochs=epochs, seconds=seconds,
        steps=steps, max_seconds=max_seconds, img=img, device=device, seed=seed, batch_size=batch_size, lr=lr,
        save=save, out=out, resume=resume, tracking_uri=tracking_uri, mlflow=not no_mlflow, progress=not as_json,
        log=lambda line: lines.print(literal(line), highlight=False, soft_wrap=True))
    if result is not None and as_json:
        _print_json(result)
    elif result is not None and out is None:
        print_train(result)


@app.command()
def search(
    config: Annotated[str, typer.Option("--config", "-c", help="Search YAML (or a packaged name: demo, ...).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.seconds=30.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the folder).")]
    = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Record in the study only.")] = False,
) -> None:
    """Run a search: Ray Tune + Optuna over the space, results in the study and MLflow."""
    from gpnas.experiments.config import load_config
    from gpnas.experiments.search_api import start_search

    extra = list(overrides or [])
    if address:
        extra.append(f"ray_address={address}")
    if tracking_uri:
        extra.append(f"storage.tracking_uri={tracking_uri}")
    start_search(load_config(config, extra), console=console, mlflow=not no_mlflow)


@app.command()
def resume(
    search: opt.SearchName,
    root: opt.Root = opt.DEFAULT_ROOT,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Record in the study only.")] = False,
) -> None:
    """Continue a stopped or killed search: exactly the remaining budget runs."""
    from gpnas.experiments.search_api import resume_search

    resume_search(search, root=root, address=address, console=console, mlflow=not no_mlflow)


@app.command()
def status(
    search: opt.SearchName,
    root: opt.Root = opt.DEFAULT_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Trial counts by state and the Pareto trials of a search (read from its study)."""
    from gpnas.experiments.search_api import open_search, search_status

    folder, cfg = open_search(search, root)
    info = search_status(folder, cfg)
    if as_json:
        _print_json(info)
        return
    tab = table("state", "trials", title=f"search {info['name']}: {info['finished']}/{info['total']} finished")
    for state, n in info["trials"].items():
        add_row(tab, state, n)
    console.print(tab)
    say(f"Pareto trials: {info['pareto']}")


@app.command()
def demo(
    root: opt.Root = opt.DEFAULT_ROOT,
) -> None:
    """Run (or finish) the default CPU search and print its Pareto front and how to open it in MLflow."""
    from gpnas.experiments.search_api import run_demo

    run_demo(root=root, console=console)


@app.command()
def pareto(
    search: opt.SearchName,
    root: opt.Root = opt.DEFAULT_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw the front into this PNG: after `gpnas refine`, AP ± sd over the seeds against GFLOPs, "
             "the refined front as a staircase and the search's enqueued points (presets) labelled; before, "
             "the proxy front.")] = None,
) -> None:
    """The current Pareto front of a search (feasible complete trials)."""
    from gpnas.experiments.search_api import open_search
    from gpnas.objectives.definitions import OBJECTIVES, format_value
    from gpnas.results.export import pareto_rows

    folder, cfg = open_search(search, root)
    rows = pareto_rows(cfg.info())
    if plot is not None:
        from gpnas.results import study as st
        from gpnas.results.report import named_points, write_named_front_png, write_pareto_png

        recs = st.records(st.load_study(folder, cfg.name))
        points = named_points(recs, cfg.named_points())
        if points:
            write_named_front_png(points, plot, title=f"{cfg.name}: refined front vs its enqueued points")
        else:
            write_pareto_png(recs, list(cfg.objectives), cfg.info().directions(), plot)
        say(f"wrote {plot}")
    if as_json:
        _print_json(rows)
        return
    refined = any(r["refined"] for r in rows)
    others = [o for o in OBJECTIVES if o != "ap"]  # every registered objective, whatever this search optimised
    cols = ("trial", "arch_id", "ap ± sd (seeds)" if refined else "ap", "ap50", *others, "run_id")
    title = f"{'Refined ' if refined else ''}Pareto front of {cfg.name}"
    tab = table(*cols, title=title)
    for r in rows:
        ap = f"{r['ap']:.4f} ± {r['ap_sd']:.4f} ({len(r['seeds'])})" if r["refined"] else f"{r['ap']:.4f}"
        add_row(tab, r["trial_id"], r["arch_id"], ap, f"{r['ap50']:.4f}", *(format_value(o, r[o]) for o in others),
                r["run_id"] or "-")
    console.print(tab)
    if refined:
        say("AP is the mean over the refinement seeds at the larger budget (the search's own: ap_proxy in --json)")


@app.command()
def export(
    search: opt.SearchName,
    pick: Annotated[str, typer.Option(help="pareto | knee | best-ap | fastest | a condition like 'latency_ms<5'.")]
    = "pareto",
    out: Annotated[Path, typer.Option(help="Folder for the spec YAMLs and manifest.json.")] = Path("exported"),
    weights: Annotated[bool, typer.Option("--weights", help="Also copy the proxy-trained weights.")] = False,
    root: opt.Root = opt.DEFAULT_ROOT,
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that holds files (overwrites the "
                                                        "files export writes).")] = False,
    fmt: Annotated[list[str] | None, typer.Option(
        "--format", metavar="<format,...>",
        help="spec, onnx, torchscript; several: repeat it or list them, onnx,torchscript (the spec YAML is "
             "always written).", callback=opt.export_formats)] = None,
    img: Annotated[int | None, typer.Option(help="Graph input size (default: the spec's).", callback=opt.img_size)]
    = None,
    batch: Annotated[str, typer.Option(help="Graph batch: a number, or 'dynamic'.", callback=opt.batch_or_dynamic)]
    = "1",
    dynamic_size: Annotated[bool, typer.Option("--dynamic-size", help="Any input size (a multiple of 32).")]
    = False,
    decode: Annotated[bool, typer.Option("--decode", help="Decode boxes in the graph (NMS stays outside).")]
    = False,
    opset: Annotated[int, typer.Option(help=f"ONNX opset ({opt.OPSETS[0]}-{opt.OPSETS[1]}).", callback=opt.within(
        *opt.OPSETS, "the ONNX opsets gpnas' graphs export at"))] = 18,
    latency: Annotated[bool, typer.Option("--latency", help="Time the ONNX graph with onnxruntime and the torch "
                                                            "model under the search's CPU protocol.")] = False,
) -> None:
    """Write the chosen architectures as spec YAMLs (they rebuild the measured models) plus a manifest; with
    --format onnx / torchscript also the fused graphs, each checked by running it against the torch model."""
    from gpnas.experiments.search_api import open_search
    from gpnas.objectives.definitions import format_value
    from gpnas.results.deploy import DeployOptions
    from gpnas.results.export import check_out
    from gpnas.results.export import export as export_archs

    if dynamic_size and opset < opt.DYNAMIC_SIZE_MIN_OPSET:
        raise GpnasError(f"--opset {opset} with --dynamic-size: torch.export's exporter writes opset "
                         f"{opt.DYNAMIC_SIZE_MIN_OPSET} or later; give --opset {opt.DYNAMIC_SIZE_MIN_OPSET}-"
                         f"{opt.OPSETS[1]}, or drop --dynamic-size for a fixed input size")
    deploy = DeployOptions(img=img, batch=None if batch == "dynamic" else int(batch), dynamic_size=dynamic_size,
                           decode=decode, opset=opset, latency=latency)
    check_out(out, force=force)  # refuse a bad --out before the search is even read
    _, cfg = open_search(search, root)
    manifest = export_archs(cfg.info(), pick, out, weights=weights, force=force,
                            formats=tuple(fmt or ("spec",)), deploy=deploy)
    shown = dict.fromkeys(("ap", "gflops", *cfg.objectives))  # AP and size always, then the search's objectives
    for entry in manifest["architectures"]:
        say("  ", out / entry["spec"], f"  trial {entry['trial_id']}  "
            + "  ".join(f"{k} {format_value(k, entry.get(k))}" for k in shown))
        for kind, graph in entry.get("deploy", {}).items():
            if isinstance(graph, dict):
                check = graph["check"]
                say("    ", out / graph["file"], f"  {kind}: max |diff| {check['max_abs_diff']:.2g} vs torch, "
                    f"AP {check['ap_runtime']:.4f} (torch {check['ap_torch']:.4f}) on {check['images']} "
                    "digits val images")
    say(f"wrote {len(manifest['architectures'])} architectures and ", out / "manifest.json")


@app.command()
def fidelity(
    search: opt.OptionalSearchName = None,
    panel: Annotated[str | None, typer.Option(
        help="A named panel instead of a search: study (the proxy study's 20 demo-space candidates, 12 "
             "size-matched) or nano (12 presets and variants).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="With --panel: config overrides, e.g. "
                                                          "train.steps=600.")] = None,
    config: Annotated[str, typer.Option(help="With --panel: the config whose data and train settings apply.")]
    = "demo",
    factor: Annotated[float, typer.Option(help="Reference budget = factor × the proxy budget.",
                                          callback=opt.at_least(1, "the reference budget is at least the proxy's"))]
    = 4.0,
    seeds: Annotated[int, typer.Option(help="Seeds at the proxy budget (seed-to-seed ρ needs 2).",
                                       callback=opt.at_least(1, "seeds"))] = 2,
    reference_seeds: Annotated[int, typer.Option(help="Seeds at the reference budget.",
                                                 callback=opt.at_least(1, "seeds"))] = 1,
    candidates: Annotated[int, typer.Option(help="From a search: front + spread sample, this many.",
                                            callback=opt.at_least(2, "a rank correlation needs two"))] = 8,
    workers: Annotated[int | None, typer.Option(help="Runs at once (default: budget.max_concurrent).",
                                                callback=opt.at_least(1, "runs at once"))] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: SEARCH/fidelity).")] = None,
    root: opt.Root = opt.DEFAULT_ROOT,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the report to MLflow.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Does the proxy ranking hold? Re-train candidates longer and with more seeds; report ρ, τ and baselines.

    Long work: every finished run is kept, so a stopped or killed fidelity run continues where it stopped."""
    from gpnas.experiments.fidelity import run_fidelity

    if search is not None and panel is not None:
        overrides = [search, *(overrides or [])]  # with --panel, the first positional is an override
        search = None
    report = run_fidelity(
        search, panel_name=panel, root=root, config=config, overrides=tuple(overrides or ()), factor=factor,
        n_seeds=seeds, n_reference_seeds=reference_seeds, max_candidates=candidates, workers=workers, out=out,
        mlflow=not no_mlflow, say=(lambda s: None) if as_json else say,
    )
    if as_json:
        _print_json(report)
        return
    print_fidelity(report)


@app.command()
def analyze(
    searches: Annotated[list[str], typer.Argument(metavar="NAME_OR_DIR", help="Search names (under --root) "
                                                   "or folders; several are pooled.")],
    target: Annotated[str, typer.Option(help="auto | proxy | fidelity: the AP to explain (auto: the long-budget "
                                             "AP of `gpnas fidelity` when 5+ candidates have it).",
                                        callback=opt.one_of("auto", "proxy", "fidelity"))] = "auto",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: SEARCH/analysis, or "
                                                  "ROOT/analysis-A+B for several).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the report to the search's run.")]
    = False,
    root: opt.Root = opt.DEFAULT_ROOT,
) -> None:
    """Which gradient-path features predict AP once GFLOPs and params are held fixed: partial Spearman ρ per
    feature, and a cross-validated surrogate on features + size against size alone."""
    from gpnas.experiments.cli_output import print_analysis
    from gpnas.experiments.search_api import open_search
    from gpnas.results.analysis import analyze as analyze_searches

    infos = [open_search(name, root)[1].info() for name in searches]
    report, _ = analyze_searches(infos, target=target, out=out, mlflow=not no_mlflow)
    if as_json:
        _print_json(report)
        return
    print_analysis(report)


@app.command()
def refine(
    search: opt.SearchName,
    top: Annotated[int | None, typer.Option(help="Non-dominated ranks to refine (1: the front; default: the "
                                                 "config's refine.top, else 1).", callback=opt.at_least(1, "ranks"))]
    = None,
    budget_multiplier: Annotated[float | None, typer.Option(help="Refined budget = this × the trial budget.",
                                                            callback=opt.at_least(1, "at least the trial budget"))]
    = None,
    seeds: Annotated[int | None, typer.Option(help="Training seeds per refined trial.",
                                              callback=opt.at_least(1, "seeds"))] = None,
    max_trials: Annotated[int | None, typer.Option(help="The most trials refined.",
                                                   callback=opt.at_least(1, "trials"))] = None,
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Also refine this trial (a number, or a preset/spec file the search enqueued), whatever "
                          "its rank; repeatable (default: the config's refine.include).")] = None,
    workers: Annotated[int | None, typer.Option(help="Runs at once (default: budget.max_concurrent).",
                                                callback=opt.at_least(1, "runs at once"))] = None,
    root: opt.Root = opt.DEFAULT_ROOT,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Record in the study only.")] = False,
) -> None:
    """Retrain the front at a larger budget with several seeds; the front shown and exported becomes the refined
    one (mean ± sd AP). A killed refinement continues where it stopped."""
    from gpnas.experiments.search_api import open_search
    from gpnas.experiments.search_api import refine as refine_front

    _, cfg = open_search(search, root)
    refine_front(search, root=root, console=console, mlflow=not no_mlflow,
                 top=top if top is not None else (cfg.refine.top or 1), budget_multiplier=budget_multiplier,
                 seeds=seeds, max_trials=max_trials, workers=workers,
                 include=tuple(include) if include else None)


@app.command()
def sync(
    search: opt.SearchName,
    root: opt.Root = opt.DEFAULT_ROOT,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: the search's).")] = None,
    weights: Annotated[bool, typer.Option("--weights", help="Also copy the trained weights back from MLflow.")]
    = False,
) -> None:
    """Backfill MLflow from the study (after a tracking outage), re-tag the Pareto front, and copy back from
    MLflow what the search folder lacks (spec files; weights with --weights: trials run on other machines)."""
    from gpnas.experiments.config import load_config
    from gpnas.experiments.search_api import open_search
    from gpnas.results.tracking import MlflowTracker

    folder, cfg = open_search(search, root)
    if tracking_uri:
        cfg = load_config(folder.config, [f"storage.tracking_uri={tracking_uri}", f"storage.root={folder.path.parent}"])
    tracker = MlflowTracker.connect(cfg.info())
    tracker.start_search(cfg.info())
    logged = tracker.sync(cfg.info())
    tracker.finish_search(cfg.info())
    restored = tracker.restore_local(cfg.info(), weights=weights)
    say(f"logged {logged} missing trial runs; Pareto tags updated; copied {len(restored)} missing files back "
        f"into {folder}. ", tracker.how_to_open())


@app.command()
def ui(
    search: opt.SearchName,
    root: opt.Root = opt.DEFAULT_ROOT,
    port: opt.Port = 5000,
) -> None:
    """Serve the MLflow UI for a search's local store on 127.0.0.1."""
    from gpnas.experiments.search_api import open_search
    from gpnas.results.ui_server import serve_ui

    folder, _ = open_search(search, root)
    raise typer.Exit(serve_ui(folder, port))


@app.command()
def latency(
    arch: Annotated[str, typer.Argument(help="Preset name, spec YAML file, or an exported .onnx file.")],
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    batch: Annotated[int, typer.Option(help="Batch size.", callback=opt.at_least(1, "images per forward pass"))] = 1,
    img: Annotated[int | None, typer.Option(help="Input size (default: the spec's).", callback=opt.img_size)] = None,
    dtype: Annotated[str, typer.Option(help="fp32, fp16 (CUDA) or bf16.")] = "fp32",
    repeats: Annotated[int | None, typer.Option(help="Timed repeats (default: a search's, 10).",
                                                callback=opt.at_least(1, "timed runs"))] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up iterations (default: a search's, 5).",
                                               callback=opt.at_least(0, "untimed runs"))] = None,
    threads: Annotated[int, typer.Option(help="CPU threads.", callback=opt.at_least(1, "threads"))] = 1,
    iters: Annotated[int | None, typer.Option(help="Passes per timed repeat (default: a search's, 3).",
                                              callback=opt.at_least(1, "passes per timed repeat"))] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="CUDA: time replays of the pass captured in a "
                                                                  "CUDA graph (no Python launch overhead).")] = False,
    mode: Annotated[str, typer.Option(help="measured (end to end), predicted (per-layer table) or both.",
                                      callback=opt.one_of("measured", "predicted", "both"))] = "measured",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Latency of the fused model under a declared protocol (the one a search uses, by default): measured end to
    end, predicted from this machine's per-layer table, or both."""
    from gpnas.experiments.inspect import resolve_arch
    from gpnas.experiments.stages import build
    from gpnas.experiments.stages import latency as latency_of
    from gpnas.objectives.latency import LatencyProtocol

    given = {k: v for k, v in (("repeats", repeats), ("warmup", warmup), ("iters_per_repeat", iters)) if v is not None}
    settings = {"device": device, "batch": batch, "dtype": dtype, "threads": threads, "cuda_graph": cuda_graph, **given}
    if arch.endswith(".onnx"):
        _onnx_latency(Path(arch), settings, img=img, mode=mode, as_json=as_json)
        return
    spec = resolve_arch(arch)
    protocol = LatencyProtocol(img_size=img or spec.img_size, **settings)
    record = latency_of(build(spec, seed=0), protocol, mode)
    if as_json:
        _print_json({"arch_id": spec.arch_id, "name": spec.name, **record})
        return
    tab = table(show_header=False, title=f"latency of {spec.name or spec.arch_id}")
    if record["predicted"]:
        p = record["predicted"]
        add_row(tab, "predicted_ms", f"{p['ms']:.4f} ({p['n_layers']} layers, {p['timed_now']} timed now)")
    if record["measured"]:
        for key in ("median_ms", "iqr_ms", "cv", "device_name"):
            value = record["measured"][key]
            add_row(tab, f"measured {key}", f"{value:.4f}" if isinstance(value, float) else value)
    add_row(tab, "protocol", json.dumps(record["protocol"]))
    console.print(tab)


def _onnx_latency(path: Path, settings: dict[str, Any], *, img: int | None, mode: str, as_json: bool) -> None:
    """`gpnas latency MODEL.onnx`: the exported graph under onnxruntime, with the same protocol as a torch model
    (the input size defaults to the graph's own when it is fixed); predicted from the spec the graph carries."""
    from gpnas.experiments.onnx_latency import onnx_latency
    from gpnas.objectives.latency import LatencyProtocol
    from gpnas.objectives.onnx_runtime import input_shape, onnx_session

    fixed = input_shape(onnx_session(path))[2]
    if img is None and not isinstance(fixed, int):
        raise GpnasError(f"{path} takes any input size: give one with --img (a multiple of 32)")
    protocol = LatencyProtocol(img_size=img or int(fixed), **settings)
    record = onnx_latency(path, protocol, mode)
    if as_json:
        _print_json(record)
        return
    tab = table(show_header=False, title=f"latency of {path.name}")
    if record["predicted"]:
        p = record["predicted"]
        add_row(tab, "predicted_ms", f"{p['ms']:.4f} ({p['n_layers']} layers, {p['timed_now']} timed now), from "
                f"{p['source']} (arch_id {record['arch_id']}): {p['of']}")
    elif record["predicted_note"]:
        add_row(tab, "predicted_ms", record["predicted_note"])
    if record["measured"]:
        measured = record["measured"]
        for key in ("median_ms", "iqr_ms", "cv", "device_name"):
            value = measured[key]
            add_row(tab, f"measured {key}", f"{value:.4f}" if isinstance(value, float) else value)
    add_row(tab, "protocol", json.dumps(record["protocol"]))
    console.print(tab)


def _ended(code: object) -> int:
    """The exit status of a command that returned ``code`` (typer.Exit's code, or None for success)."""
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def main() -> None:
    """Console entry point: gpnas' own errors print as one paragraph, without a traceback, and exit with their
    ``exit_code`` (2 for bad input); usage errors print typer's usage message and exit 2."""
    from gpnas.experiments.cli_output import click_classes, err_console, literal, show_click_error

    try:
        code = _ended(app(standalone_mode=False))
    except GpnasError as err:
        print_error("error", err)
        code = int(getattr(err, "exit_code", 2))
    except SearchAborted as err:
        print_error("gpnas bug", err)
        err_console.print(literal("This is a bug in gpnas, not in your input; please report it with the traceback "
                                  "above."), soft_wrap=True)
        code = 1
    except KeyboardInterrupt:
        err_console.print("aborted")
        code = 130
    except Exception as exc:  # typer's vendored click and a standalone click raise different classes
        if isinstance(exc, click_classes("Exit")):
            code = _ended(getattr(exc, "exit_code", 0))
        elif isinstance(exc, click_classes("Abort")):
            err_console.print("aborted")
            code = 130
        elif isinstance(exc, click_classes("ClickException")):
            code = show_click_error(exc)
        else:
            raise
    raise SystemExit(code)


if __name__ == "__main__":
    main()
