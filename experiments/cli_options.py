"""The `gpnas` command's input, checked where it is read: while the command line is parsed, before any command runs.

Every option that takes a number, a choice or a list has one definition here or a callback from here, and every
command is a :class:`StrictCommand`, which refuses a single-valued option given twice (a silent "last one wins")
and two options of an exclusive group (e.g. two training budgets). A bad value raises :class:`ConfigError`: the CLI
prints it as one paragraph that names the option and the value, and exits with code 2, without a traceback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import typer
from typer.core import TyperCommand

from gpnas.errors import ConfigError

__all__ = ["BUDGETS", "DEFAULT_ROOT", "DYNAMIC_SIZE_MIN_OPSET", "EXPORT_FORMATS", "OPSETS", "Exclusive",
           "OptionalSearchName", "Port", "Root", "SearchName", "StrictCommand", "StrictTyper", "at_least",
           "batch_or_dynamic", "check_command_line", "export_formats", "flag", "greater_than", "img_size", "one_of",
           "strict_command", "within"]

#: What `gpnas export --format` writes (gpnas.results.deploy.FORMATS, which imports torch; a test keeps them equal).
EXPORT_FORMATS = ("spec", "onnx", "torchscript")
#: ONNX opsets `gpnas export --opset` accepts: from 13, the lowest at which gpnas' graphs export (aten::unflatten
#: has no ONNX form before it), to 20, the highest torch 2.13's tracing exporter supports
#: (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET; above it torch warns that it is unsupported).
OPSETS = (13, 20)
#: The lowest opset of torch.export's exporter (``--dynamic-size``): asked for less, it tries to convert its opset-18
#: graph down, fails for these models, and writes opset 18 (torch.onnx._internal.exporter._constants.TORCHLIB_OPSET).
DYNAMIC_SIZE_MIN_OPSET = 18

Check = Callable[[typer.Context, typer.CallbackParam, Any], Any]


def flag(param: Any) -> str:
    """How the user wrote ``param``: its long option name (``--port``), or an argument's name in capitals."""
    longs = [o for o in getattr(param, "opts", ()) or () if o.startswith("--")]
    return longs[0] if longs else str(param.name).upper()


def _checked(test: Callable[[Any], str | None]) -> Check:
    """A typer callback: ``test(value)`` returns what is wrong (None: nothing), raised as a ConfigError that
    starts with the option and the value. Unset options (None) and shell completion pass."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is None or ctx.resilient_parsing:
            return value
        problem = test(value)
        if problem is not None:
            raise ConfigError(f"{flag(param)} {value}: {problem}")
        return value

    return check


def at_least(low: float, what: str = "") -> Check:
    """``value >= low``; ``what`` says what the number counts (``images per step``)."""
    return _checked(lambda v: None if v >= low else f"give a number >= {low:g}{f' ({what})' if what else ''}")


def greater_than(low: float, what: str = "") -> Check:
    """``value > low``."""
    return _checked(lambda v: None if v > low else f"give a number > {low:g}{f' ({what})' if what else ''}")


def within(low: int, high: int, what: str = "") -> Check:
    """``low <= value <= high``."""
    return _checked(lambda v: None if low <= v <= high else
                    f"must be in {low}..{high}{f' ({what})' if what else ''}")


def one_of(*choices: str) -> Check:
    """One of ``choices``."""
    return _checked(lambda v: None if v in choices else f"choose {', '.join(map(repr, choices[:-1]))} or "
                                                        f"{choices[-1]!r}")


def _img_problem(value: int) -> str | None:
    from gpnas.search_space.spec import MAX_IMG_SIZE

    if value >= 32 and value % 32 == 0 and value <= MAX_IMG_SIZE:
        return None
    near = min(max(32, round(value / 32) * 32), MAX_IMG_SIZE)
    return f"the input size must be a positive multiple of 32 (the largest stride), at most {MAX_IMG_SIZE}; " \
           f"e.g. --img {near}"


#: ``--img``: a positive multiple of 32, at most the largest size a spec allows.
img_size = _checked(_img_problem)

#: ``--batch`` of `gpnas export`: a whole number >= 1, or 'dynamic'.
batch_or_dynamic = _checked(lambda v: None if v == "dynamic" or (v.isdigit() and int(v) >= 1) else
                            "give a batch size (1, 8, ...) or 'dynamic'")


def export_formats(ctx: typer.Context, param: typer.CallbackParam, value: list[str] | None) -> tuple[str, ...]:
    """``--format`` given once or several times, each a name or a comma list (``onnx,torchscript``): the merged
    formats, in order, without repeats; ``("spec",)`` when none is given."""
    given = [f.strip() for item in value or () for f in item.split(",") if f.strip()]
    unknown = [f for f in given if f not in EXPORT_FORMATS]
    if unknown and not ctx.resilient_parsing:
        raise ConfigError(f"{flag(param)} {','.join(unknown)}: choose from {', '.join(EXPORT_FORMATS)} (several: "
                          "repeat --format, or list them: --format onnx,torchscript)")
    return tuple(dict.fromkeys(given)) or ("spec",)


# ---------------------------------------------------------------------------------------------- shared options
_SEARCH_HELP = "Search name (under --root) or its folder."
#: The search a command reads: a name under ``--root``, or the search's folder.
SearchName = Annotated[str, typer.Argument(help=_SEARCH_HELP)]
OptionalSearchName = Annotated[str | None, typer.Argument(help=_SEARCH_HELP)]
#: The folder that holds the searches (``runs/<name>/``), and its default.
DEFAULT_ROOT = "runs"
Root = Annotated[str, typer.Option(help="Folder that holds the searches.")]
#: A TCP port to listen on.
Port = Annotated[int, typer.Option(help="Port on 127.0.0.1 (1-65535).",
                                   callback=within(1, 65535, "a TCP port; e.g. --port 5000"))]


# --------------------------------------------------------------------------------- the command line as a whole
@dataclass(frozen=True)
class Exclusive:
    """Options that cannot be given together; ``hint`` says what to do instead."""

    options: tuple[str, ...]
    hint: str


#: `gpnas train`'s budgets: the CLI takes one (a search config's train section may combine them).
BUDGETS = Exclusive(("--steps", "--epochs", "--seconds"),
                    "give one budget: --steps N, --epochs N or --seconds S (in a search config, train.steps, "
                    "train.epochs and train.seconds may be combined: the first one reached ends the run)")


def _single_valued(param: Any) -> bool:
    """An option that takes one value, so that giving it twice would silently keep the last."""
    return getattr(param, "param_type_name", "") == "option" and not (
        getattr(param, "multiple", False) or getattr(param, "count", False) or getattr(param, "is_flag", False))


def check_command_line(order: Sequence[Any], exclusive: Sequence[Exclusive]) -> None:
    """``order``: the parameters in the order the parser met them (a repeated option appears each time)."""
    for param, times in Counter(order).items():
        if times > 1 and _single_valued(param):
            raise ConfigError(f"{flag(param)} is given {times} times, but it takes one value: give it once")
    given = {flag(p) for p in order}
    for group in exclusive:
        used = [name for name in group.options if name in given]
        if len(used) > 1:
            names = f"{', '.join(used[:-1])} and {used[-1]}"
            raise ConfigError(f"{names} cannot be given together: {group.hint}")


class StrictCommand(TyperCommand):
    """A typer command that runs :func:`check_command_line` on what the parser read, before any option's
    callback or the command itself runs."""

    exclusive: ClassVar[tuple[Exclusive, ...]] = ()

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_strictly(args: list[str]) -> tuple[Any, ...]:
            opts, rest, order = parse(args=args)
            if not ctx.resilient_parsing:
                check_command_line(order, self.exclusive)
            return opts, rest, order

        parser.parse_args = parse_strictly  # the parser's own result, checked on the way out
        return parser


def strict_command(*exclusive: Exclusive) -> type[StrictCommand]:
    """A :class:`StrictCommand` class that also refuses the ``exclusive`` groups."""
    return type("StrictCommand", (StrictCommand,), {"exclusive": exclusive})


class StrictTyper(typer.Typer):
    """A typer app whose commands are :class:`StrictCommand` unless a subclass of it is given."""

    def command(self, *args: Any, cls: type[StrictCommand] = StrictCommand, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)
