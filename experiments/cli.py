"""The gpnas command: each subcommand parses, loads, and calls an importable library function (STYLE.md 5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from search_space.errors import GpnasError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Gradient-path NAS for real-time detectors.")
console = Console()
err_console = Console(stderr=True)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command()
def presets(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List the named architectures (the paper's models and CPU-sized nano versions)."""
    from experiments.inspect import list_presets

    rows = list_presets()
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "family", "description", title="gpnas presets")
    for row in rows:
        table.add_row(row["name"], row["family"], row["description"])
    console.print(table)


@app.command()
def describe(
    arch: Annotated[str, typer.Argument(help="Preset name or spec YAML file.")],
    img: Annotated[int | None, typer.Option(help="Input size for GFLOPs (default: the spec's).")] = None,
    head: Annotated[str | None, typer.Option(help="detect or seg (seg adds the paper's Segment head).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    export_spec: Annotated[Path | None, typer.Option(help="Write the YAML that rebuilds this model.")] = None,
    gradient_path: Annotated[bool, typer.Option("--gradient-path", help="Add gradient-path metrics.")] = False,
    layers: Annotated[bool, typer.Option("--layers", help="With --gradient-path: the per-layer table.")] = False,
) -> None:
    """Size and structure of one architecture, in the paper's units (fused, 2×MACs)."""
    from experiments.inspect import describe as describe_arch
    from experiments.inspect import resolve_arch

    if head is not None and head not in ("detect", "seg"):
        raise GpnasError(f"--head {head!r}: choose 'detect' or 'seg'")
    spec = resolve_arch(arch)
    info = describe_arch(spec, img=img, head=head, gradient_path=gradient_path or layers, layers=layers)
    if export_spec is not None:
        from search_space.spec import ArchSpec

        final = ArchSpec.from_dict(info["spec"])
        export_spec.parent.mkdir(parents=True, exist_ok=True)
        export_spec.write_text(final.to_yaml())
        info["exported_spec"] = str(export_spec)
    if as_json:
        _print_json(info)
        return
    _print_describe(info)


def _print_describe(info: dict[str, Any]) -> None:
    table = Table(show_header=False, title=f"{info['name'] or 'architecture'} ({info['arch_id']})")
    for key in ("head", "params", "params_fused", "gflops", "gflops_640", "img", "num_classes"):
        value = info[key]
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    gp = info.get("gradient_path")
    if gp:
        agg = Table("gradient-path aggregate", "value", title="gradient paths")
        for key, value in gp.items():
            if key != "layers":
                agg.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(agg)
        if "layers" in gp:
            _print_layers(gp["layers"])
    if "exported_spec" in info:
        console.print(f"spec written to {info['exported_spec']}")


def _print_layers(rows: list[dict[str, Any]]) -> None:
    cols = ["name", "sgp", "lgp", "n_src", "n_comb", "n_cls", "npath", "dup", "agg"]
    table = Table(*cols, title="per-layer gradient paths")
    for row in rows:
        table.add_row(*(f"{row.get(c):.3g}" if isinstance(row.get(c), float) else str(row.get(c)) for c in cols))
    console.print(table)


def main() -> None:
    """Console entry point: gpnas' own errors print as one paragraph, without a traceback, exit code 2."""
    try:
        app(standalone_mode=False)
    except GpnasError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        raise SystemExit(130) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # click usage errors arrive as ClickException
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    main()
