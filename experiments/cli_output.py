"""What the `gpnas` command prints, and how it ends: every user-provided value and every error message is printed
literally (a path or a message in brackets is text, never console markup), and usage errors of either click
(typer's vendored copy or a standalone one) print typer's usage message instead of a traceback."""

from __future__ import annotations

import importlib
import json
import sys
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["add_row", "click_classes", "console", "err_console", "literal", "print_analysis", "print_describe",
           "print_error", "print_fidelity", "print_json", "print_train", "say", "show_click_error", "table"]

console = Console()
err_console = Console(stderr=True)


def literal(value: Any, style: str = "") -> Text:
    """``value`` as plain text: brackets stay brackets, nothing is parsed as markup."""
    return Text(str(value), style=style)


def say(*parts: Any) -> None:
    """One line on stdout, every part literal."""
    console.print(Text.assemble(*(literal(p) for p in parts)), highlight=False, soft_wrap=True)


def table(*columns: str, title: Any = None, show_header: bool = True) -> Table:
    return Table(*columns, title=None if title is None else literal(title), show_header=show_header)


def add_row(tab: Table, *cells: Any) -> None:
    tab.add_row(*(literal(c) for c in cells))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_error(label: str, message: Any) -> None:
    """``label: message`` on stderr as one paragraph; the message is printed literally."""
    err_console.print(Text.assemble((f"{label}: ", "bold red"), literal(message)), highlight=False, soft_wrap=True)


def _click_modules() -> list[ModuleType]:
    """The exception modules of typer's vendored click (typer >= 0.2x), of typer itself, and of a standalone
    click, whichever are installed: older typers raise click's classes, newer ones their own copies."""
    found = []
    for name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Every installed class called ``name`` (ClickException, Abort, Exit) among the modules above."""
    classes = (getattr(module, name, None) for module in _click_modules())
    return tuple({c for c in classes if isinstance(c, type) and issubclass(c, BaseException)})


def show_click_error(exc: BaseException) -> int:
    """Print a click/typer usage error the way typer does (usage line, hint, message panel); its exit code."""
    if type(exc).__module__.startswith("typer."):
        try:
            from typer import rich_utils
        except ImportError:  # typer without rich: click's plain rendering
            exc.show()  # type: ignore[attr-defined]
        else:
            rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
    else:
        exc.show()  # type: ignore[attr-defined]
    return int(getattr(exc, "exit_code", 2))


def print_describe(info: dict[str, Any]) -> None:
    tab = table(show_header=False, title=f"{info['name'] or 'architecture'} ({info['arch_id']})")
    for key in ("head", "params", "params_fused", "gflops", "gflops_640", "img", "num_classes"):
        value = info[key]
        add_row(tab, key, f"{value:,}" if isinstance(value, int) else value)
    console.print(tab)
    gp = info.get("gradient_path")
    if gp:
        agg = table("gradient-path aggregate", "value", title="gradient paths")
        for key, value in gp.items():
            if key != "layers":
                add_row(agg, key, f"{value:.4g}" if isinstance(value, float) else value)
        console.print(agg)
        if "layers" in gp:
            _print_layers(gp["layers"])
    if "exported_spec" in info:
        say("spec written to ", info["exported_spec"])


def _print_layers(rows: list[dict[str, Any]]) -> None:
    cols = ["name", "sgp", "lgp", "n_src", "n_comb", "n_cls", "npath", "dup", "agg"]
    tab = table(*cols, title="per-layer gradient paths")
    for row in rows:
        add_row(tab, *(f"{row.get(c):.3g}" if isinstance(row.get(c), float) else row.get(c) for c in cols))
    console.print(tab)


def print_train(result: dict[str, Any]) -> None:
    """`gpnas train` (proxy training): AP, AP50, AP75, seconds, throughput and budget used."""
    name = result["name"] or result["arch_id"]
    tab = table(show_header=False, title=f"proxy training of {name} on {result['data']}")
    for key in ("ap", "ap50", "ap75", "train_seconds", "images_per_second", "epochs", "steps", "timed_out"):
        value = result.get(key)
        add_row(tab, key, f"{value:.4f}" if isinstance(value, float) else value)
    console.print(tab)


def print_fidelity(report: dict[str, Any]) -> None:
    from gpnas.results.fidelity_report import format_value as fmt

    seeds = report["proxy_seeds"]
    tab = table("candidate", "arch_id", *[f"proxy AP s{s}" for s in seeds], "reference AP", "GFLOPs",
                title=f"proxy fidelity ({report['settings']['proxy']} vs {report['settings']['reference']})")
    for e in report["candidates"]:
        add_row(tab, e["label"], e["arch_id"], *[f"{e[f'proxy_ap_s{s}']:.4f}" for s in seeds],
                f"{e['reference_ap']:.4f}", f"{e.get('gflops', float('nan')):.4f}")
    console.print(tab)
    say(f"Spearman ρ {fmt(report['spearman'])} · Kendall τ {fmt(report['kendall'])} · top-{report['top_k']} "
        f"overlap {fmt(report['top_k_overlap'])} · seed-to-seed ρ {fmt(report['seed_spearman'])} · ρ of GFLOPs "
        f"{fmt(report['baselines'].get('gflops'))}, params {fmt(report['baselines'].get('params'))}")
    best_gp = sorted(((k, v) for k, v in report["baselines"].items() if k.startswith("gp_") and v == v),
                     key=lambda kv: -abs(kv[1]))[:3]
    if best_gp:
        say("strongest gp_* features: " + ", ".join(f"{k} {v:+.3f}" for k, v in best_gp))
    if report["incomplete"]:
        say("left out (a run failed or timed out): ", ", ".join(report["incomplete"]))
    console.print(Text.assemble(("verdict: ", "bold"), literal(report["verdict"])), highlight=False, soft_wrap=True)
    run = report.get("mlflow_run_id")
    say("table, JSON and scatter plot in ", report["folder"], f"; MLflow run {run}" if run else "")


def print_analysis(report: dict[str, Any], top: int = 15) -> None:
    """`gpnas analyze`: the features by |partial ρ| (the strongest ``top``), the surrogate comparison, the
    verdict, and where the files (and the MLflow run) are."""
    from gpnas.results.analysis_report import fmt, fmt_p

    tab = table("feature", "ρ", "p", "partial ρ", "partial p", "ρ drop",
                title=f"what predicts {report['target_label']} beyond size: {' + '.join(report['searches'])} "
                      f"({report['n_rows']} architectures)")
    tab.columns[0].no_wrap = True  # a feature name cut short names nothing
    drops = {e["input"]: e["rho_drop"] for e in report["importance"]}
    for name, b in report["baselines"].items():
        add_row(tab, f"{name} (baseline)", fmt(b["rho"]), fmt_p(b["p"]), "", "", fmt(drops.get(name)))
    for e in report["features"][:top]:
        add_row(tab, e["feature"], fmt(e["rho"]), fmt_p(e["p"]), fmt(e["partial_rho"]), fmt_p(e["partial_p"]),
                fmt(drops.get(e["feature"])))
    console.print(tab)
    say("partial ρ: GFLOPs and params held fixed; ρ drop: permutation importance in the surrogate")
    if len(report["features"]) > top:
        say(f"... {len(report['features']) - top} more features in analysis.md")
    say(f"out-of-fold Spearman ρ: features + size {fmt(report['surrogate']['rho'])} · size only "
        f"{fmt(report['size_only']['rho'])} · Δρ {fmt(report['delta_rho'])} (±{fmt(report['rho_noise'], 2)} "
        f"is chance at n {report['n_rows']})")
    if report["dropped_features"]:
        say(f"left out {len(report['dropped_features'])} feature(s) (missing in some rows, or constant): see "
            "analysis.md")
    console.print(Text.assemble(("verdict: ", "bold"), literal(report["verdict"])), highlight=False, soft_wrap=True)
    files = report["files"]
    say("wrote ", files["json"], ", ", files["md"], ", ", files["png"])
    logged = report.get("mlflow", {})
    if logged.get("logged"):
        say(f"logged to MLflow run {logged['run_id']} (artifacts under {logged['artifact_path']}/) in ",
            logged["uri"])
    else:
        say("not logged to MLflow: ", logged.get("why", "disabled"))
