"""The command line: options, and the one boundary that maps errors to exit codes."""

# No `from __future__ import annotations` here: typer reads the commands'
# annotations at every start, and as strings each would be compiled and evaluated
# again (half of the time typer takes to build the commands, #6).

import contextlib
import copy
import inspect
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .access import check_proxy, check_url_option, load_cookies, parse_header
from .backends import DEFAULT_BACKEND, backend_names, check_backend
from .catalog import CatalogOptions, parse_field_overrides
from .console import setup_logging
from .decode import require_pillow
from .engine import EngineConfig
from .errors import EXIT_CODE_TABLE, ExitCode, ImgfetchError, UsageError
from .fetch import FetchConfig
from .messages import Lang, Messages, Text, detect_lang
from .progress import line_writer
from .runner import Reporter, RunOptions, run_download

ENGINE_DEFAULTS = EngineConfig()
FETCH_DEFAULTS = FetchConfig()
THREAD_PREFIX = "imgfetch-"  # every thread imgfetch starts is named so

EXIT_CODES_HELP = "Exit codes:\n\n" + "\n\n".join(
    f"{int(code):>3}  {text}" for code, text in EXIT_CODE_TABLE
)

# typer (0.2x) converts each value with a pydantic TypeAdapter that it builds the
# first time the parameter is parsed: importing pydantic and building them cost
# about 0.15 s of every start (#6), before the first download. Every parameter
# here is of a kind whose conversion is one plain call (a parser, an Enum, str,
# bool, Path, a list of those); for those kinds the value is converted directly,
# and anything else, every failure included, goes to typer's own converter, so
# values and messages stay typer's. An older typer (no pydantic) has none of the
# internals used here, and parses as it always did.
try:
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_choice, coerce_cli_path
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover
    _DIRECT = False
else:
    _DIRECT = True

Convert = Callable[[Any, Any, Any], Any]  # (value, param, ctx) -> value

if _DIRECT:

    @dataclass(frozen=True)
    class _DirectParam(RuntimeParam):
        """A parameter's conversion without pydantic, typer's as the fallback."""

        convert: Convert

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return self.convert(value, param, ctx)
            except Exception:
                pass  # outside the handler: a traceback must not show this try
            typer_own = build_runtime_param(param.type_descriptor)
            return typer_own._coerce_value(value, param=param, ctx=ctx)


def _convert_directly(params: list[Any]) -> None:
    """Give each parameter typer has not converted yet a direct conversion."""
    if not _DIRECT:
        return
    for param in params:
        try:
            _give_direct_conversion(param)
        except Exception:  # noqa: BLE001 - typer's internals changed: its own way
            return


def _give_direct_conversion(param: Any) -> None:
    if not isinstance(param, _TyperParameter) or param._runtime_param is not None:
        return
    kind = param.type_descriptor
    if kind.file_annotation is not None:
        return
    convert = _direct_conversion(kind.annotation, kind.parameter_info)
    if convert is not None:
        param._runtime_param = _DirectParam(
            kind.parameter_info, kind.annotation, convert
        )


def _direct_conversion(annotation: Any, info: Any) -> Convert | None:
    """What typer's TypeAdapter would do for the usual values of this kind; None
    for a kind that is left to typer."""
    if get_origin(annotation) is not list:
        return _direct_item(annotation, info)
    item = _direct_item(get_args(annotation)[0], info)
    if item is None:
        return None

    def convert_list(value: Any, param: Any, ctx: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise TypeError(value)
        return [item(one, param, ctx) for one in value]

    return convert_list


def _direct_item(annotation: Any, info: Any) -> Convert | None:
    # The order of typer's checks: a parser wins over the annotation.
    parser = info.parser
    if parser is not None:
        return lambda value, param, ctx: parser(value)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        choices = list(annotation)
        return lambda value, param, ctx: coerce_cli_choice(
            value, choices=choices, case_sensitive=info.case_sensitive, ctx=ctx
        )
    if annotation is str or annotation is bool:
        return lambda value, param, ctx: _exactly(annotation, value)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        path_type = info.path_type or annotation
        if not issubclass(path_type, Path):
            return None

        def convert_path(value: Any, param: Any, ctx: Any) -> Any:
            if type(value) is str:
                value = path_type(value)  # what typer has pydantic do
            elif not isinstance(value, path_type):
                raise TypeError(value)
            return coerce_cli_path(
                value, info, path_type=path_type, param=param, ctx=ctx
            )

        return convert_path
    return None


def _exactly(kind: type, value: Any) -> Any:
    """`value` when it is already what the conversion would return."""
    if type(value) is not kind:
        raise TypeError(value)
    return value


class _Command(TyperCommand):
    def make_parser(self, ctx: Any) -> Any:
        _convert_directly(self.get_params(ctx))
        return super().make_parser(ctx)


class _Group(TyperGroup):
    def make_parser(self, ctx: Any) -> Any:
        # The help option is a parameter too, converted (as None) at every parse.
        _convert_directly(self.get_params(ctx))
        return super().make_parser(ctx)


app = typer.Typer(
    cls=_Group,
    name="imgfetch",
    help=(
        "Download every image of a product catalog, interrupt-safe: Ctrl+C, "
        "SIGTERM or kill -9 lose at most the images in flight."
    ),
    epilog=EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class ProgressMode(StrEnum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    none = "none"


class LangChoice(StrEnum):
    auto = "auto"
    en = "en"
    zh = "zh"


class BadValue(typer.BadParameter):
    """An option value a parser rejects; click adds the option's name. The text is
    English until `main` renders it in the language of the command line."""

    def __init__(self, key: str, /, **values: object) -> None:
        self.text = Text(f"err_{key}", **values)
        super().__init__(str(self.text))


def _whole_number(value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadValue("not_whole_number", value=value) from None


def _number(value: str | float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise BadValue("not_number", value=value) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise BadValue("not_finite", value=value)
    return number


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir", "-d", help="Where images and state files go.", show_default=True
    ),
]
Backend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        envvar="IMGFETCH_BACKEND",
        help=(
            f"State store: {', '.join(backend_names())}. Default: the store that "
            f"wrote the data directory, or {DEFAULT_BACKEND} for a new one."
        ),
        show_default=False,
    ),
]
Workers = Annotated[
    int,
    typer.Option("--workers", "-w", parser=_whole_number, help="Parallel downloads."),
]
SaveEvery = Annotated[
    int,
    typer.Option(
        parser=_whole_number,
        help="Save the state after this many products (json; the markers and "
        "sqlite stores save every second).",
    ),
]
SaveInterval = Annotated[
    float,
    typer.Option(
        parser=_number, help="...or after this many seconds, whichever comes first."
    ),
]
Grace = Annotated[
    float,
    typer.Option(
        parser=_number, help="Seconds in-flight downloads get to finish after Ctrl+C."
    ),
]
Progress = Annotated[
    ProgressMode,
    typer.Option(help="auto: a live display in a terminal, plain lines elsewhere."),
]
LangOpt = Annotated[
    LangChoice, typer.Option("--lang", help="Message language; auto follows LANG.")
]
IdField = Annotated[
    str | None,
    typer.Option(
        help="Field holding the product id (default: id, item_id, product_id, "
        "num_iid, goods_id; the first present)."
    ),
]
Fields = Annotated[
    list[str] | None,
    typer.Option(
        "--field",
        help="CATEGORY=FIELD, repeatable (default main=main_images, "
        "sku=sku_images, qc=qc_images).",
    ),
]
Scheme = Annotated[
    str, typer.Option(help="Scheme for protocol-relative URLs (//host/path).")
]
Original = Annotated[
    bool,
    typer.Option(
        "--original",
        help="Strip CDN thumbnail suffixes after the file name "
        "(x.jpg_400x400.jpg_.webp -> x.jpg) to fetch the original image.",
    ),
]
ConnectTimeout = Annotated[
    float, typer.Option(parser=_number, help="Seconds to connect.")
]
ReadTimeout = Annotated[
    float, typer.Option(parser=_number, help="Seconds of silence while reading.")
]
Deadline = Annotated[
    float, typer.Option(parser=_number, help="Seconds per image, retries included.")
]
Retries = Annotated[
    int,
    typer.Option(parser=_whole_number, help="Retries of an image on transient errors."),
]
MaxBytes = Annotated[
    int, typer.Option(parser=_whole_number, help="Largest image accepted, in bytes.")
]
UserAgent = Annotated[
    str,
    typer.Option(
        help="User-Agent header (default: a desktop browser's).", show_default=False
    ),
]
MaxRetryWait = Annotated[
    float,
    typer.Option(
        parser=_number, help="Longest wait before a retry, Retry-After included."
    ),
]
PerHost = Annotated[
    int,
    typer.Option(parser=_whole_number, help="Connections at once to one host."),
]
Rate = Annotated[
    float,
    typer.Option(parser=_number, help="Requests per second to one host (0: no limit)."),
]
Headers = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        metavar="'NAME: VALUE'",
        help="A header sent with every request, repeatable.",
    ),
]
Referer = Annotated[
    str | None,
    typer.Option(
        help="Referer sent with every request (default: none; a 403 is retried "
        "once with the other policy).",
        show_default=False,
    ),
]
Cookies = Annotated[
    Path | None,
    typer.Option(help="Netscape cookies.txt file whose cookies are sent."),
]
Proxy = Annotated[
    str | None,
    typer.Option(
        help="Proxy URL for every request; wins over HTTP(S)_PROXY.",
        show_default=False,
    ),
]
VerifyDecode = Annotated[
    bool,
    typer.Option(
        # Help text is rich markup: an unescaped [decode] would vanish.
        help="Decode every image fully with Pillow (pip install 'imgfetch\\[decode]')."
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")
]


def _run_options(
    *,
    data_dir: Path,
    backend: str | None,
    workers: int,
    save_every: int,
    save_interval: float,
    grace_period: float,
    progress: ProgressMode,
    id_field: str | None,
    fields: list[str] | None,
    default_scheme: str,
    original: bool,
    connect_timeout: float,
    read_timeout: float,
    deadline: float,
    retries: int,
    max_bytes: int,
    user_agent: str,
    max_retry_wait: float,
    per_host: int,
    rate: float,
    header: list[str] | None,
    referer: str | None,
    cookies: Path | None,
    proxy: str | None,
    verify_decode: bool,
) -> RunOptions:
    _check_range("--workers", workers, minimum=1, maximum=512)
    _check_range("--save-every", save_every, minimum=1)
    for name, value in (
        ("--save-interval", save_interval),
        ("--grace-period", grace_period),
        ("--connect-timeout", connect_timeout),
        ("--read-timeout", read_timeout),
        ("--deadline", deadline),
        ("--max-retry-wait", max_retry_wait),
        ("--rate", rate),
    ):
        if not value >= 0:  # also rejects NaN
            raise UsageError("negative", hint="zero_or_more", option=name, value=value)
    _check_range("--retries", retries, minimum=0, maximum=100)
    _check_range("--max-bytes", max_bytes, minimum=1)
    _check_range("--per-host", per_host, minimum=1, maximum=512)
    headers = tuple(parse_header(text) for text in header or [])
    if referer is not None:
        check_url_option("--referer", referer, ("http", "https"))
    if proxy is not None:
        check_proxy(proxy)
    if cookies is not None:
        load_cookies(cookies)  # a bad file stops here, before anything is touched
    if verify_decode:
        require_pillow()
    if default_scheme not in ("http", "https"):
        raise UsageError("bad_scheme", hint="scheme", scheme=default_scheme)
    field_map = parse_field_overrides(fields or [])
    return RunOptions(
        data_dir=data_dir,
        backend=backend and check_backend(backend),
        catalog=CatalogOptions(
            id_field or None, field_map, default_scheme, original=original
        ),
        engine=EngineConfig(
            workers=workers,
            save_every=save_every,
            save_interval=save_interval,
            grace_period=grace_period,
            categories=tuple(field_map),
        ),
        fetch=FetchConfig(
            connect_timeout=max(connect_timeout, 0.1),
            read_timeout=max(read_timeout, 0.1),
            deadline=max(deadline, 0.1),
            retries=retries,
            max_bytes=max_bytes,
            user_agent=user_agent,
            max_retry_wait=max_retry_wait,
            per_host=per_host,
            rate=rate,
            headers=headers,
            referer=referer,
            cookies=cookies,
            proxy=proxy,
            verify_decode=verify_decode,
        ),
        progress=progress.value,
    )


def _check_range(
    name: str, value: int, *, minimum: int, maximum: int | None = None
) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise UsageError(
            "out_of_range", hint="range", option=name, value=value, bounds=bounds
        )


def _messages(lang: LangChoice) -> Messages:
    if lang is LangChoice.auto:
        return Messages(detect_lang())
    chosen: Lang = "zh" if lang is LangChoice.zh else "en"
    return Messages(chosen)


@app.command(epilog=EXIT_CODES_HELP, cls=_Command)
def download(
    input_path: Annotated[
        Path | None,
        typer.Argument(
            metavar="[INPUT]",
            help="Catalog: a JSON array of products, or JSON Lines (.jsonl). "
            "Default: DATA_DIR/products.json.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = Path("data_clean"),
    backend: Backend = None,
    workers: Workers = ENGINE_DEFAULTS.workers,
    save_every: SaveEvery = ENGINE_DEFAULTS.save_every,
    save_interval: SaveInterval = ENGINE_DEFAULTS.save_interval,
    grace_period: Grace = ENGINE_DEFAULTS.grace_period,
    progress: Progress = ProgressMode.auto,
    lang: LangOpt = LangChoice.auto,
    id_field: IdField = None,
    field: Fields = None,
    default_scheme: Scheme = "https",
    original: Original = False,
    skip_invalid: Annotated[
        bool, typer.Option(help="Skip bad records with a warning instead of stopping.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Only download again the images in failed_images.json.")
    ] = False,
    connect_timeout: ConnectTimeout = FETCH_DEFAULTS.connect_timeout,
    read_timeout: ReadTimeout = FETCH_DEFAULTS.read_timeout,
    deadline: Deadline = FETCH_DEFAULTS.deadline,
    retries: Retries = FETCH_DEFAULTS.retries,
    max_bytes: MaxBytes = FETCH_DEFAULTS.max_bytes,
    user_agent: UserAgent = FETCH_DEFAULTS.user_agent,
    max_retry_wait: MaxRetryWait = FETCH_DEFAULTS.max_retry_wait,
    per_host: PerHost = FETCH_DEFAULTS.per_host,
    rate: Rate = FETCH_DEFAULTS.rate,
    header: Headers = None,
    referer: Referer = None,
    cookies: Cookies = None,
    proxy: Proxy = None,
    verify_decode: VerifyDecode = False,
    verbose: Verbose = False,
) -> None:
    """Download the catalog's images; pending work of an interrupted run goes first."""
    setup_logging(verbose)
    options = _run_options(**_common(locals()))
    msg = _messages(lang)
    source = input_path if input_path is not None else data_dir / "products.json"
    code = run_download(
        options,
        Reporter(msg, line_writer()),
        source,
        skip_invalid=skip_invalid,
        retry_failed=retry_failed,
    )
    raise typer.Exit(code)


@app.command(epilog=EXIT_CODES_HELP, cls=_Command)
def resume(
    data_dir: DataDir = Path("data_clean"),
    backend: Backend = None,
    workers: Workers = ENGINE_DEFAULTS.workers,
    save_every: SaveEvery = ENGINE_DEFAULTS.save_every,
    save_interval: SaveInterval = ENGINE_DEFAULTS.save_interval,
    grace_period: Grace = ENGINE_DEFAULTS.grace_period,
    progress: Progress = ProgressMode.auto,
    lang: LangOpt = LangChoice.auto,
    id_field: IdField = None,
    field: Fields = None,
    default_scheme: Scheme = "https",
    original: Original = False,
    connect_timeout: ConnectTimeout = FETCH_DEFAULTS.connect_timeout,
    read_timeout: ReadTimeout = FETCH_DEFAULTS.read_timeout,
    deadline: Deadline = FETCH_DEFAULTS.deadline,
    retries: Retries = FETCH_DEFAULTS.retries,
    max_bytes: MaxBytes = FETCH_DEFAULTS.max_bytes,
    user_agent: UserAgent = FETCH_DEFAULTS.user_agent,
    max_retry_wait: MaxRetryWait = FETCH_DEFAULTS.max_retry_wait,
    per_host: PerHost = FETCH_DEFAULTS.per_host,
    rate: Rate = FETCH_DEFAULTS.rate,
    header: Headers = None,
    referer: Referer = None,
    cookies: Cookies = None,
    proxy: Proxy = None,
    verify_decode: VerifyDecode = False,
    verbose: Verbose = False,
) -> None:
    """Finish only the pending tasks of an interrupted run; no catalog needed."""
    setup_logging(verbose)
    options = _run_options(**_common(locals()))
    code = run_download(options, Reporter(_messages(lang), line_writer()), None)
    raise typer.Exit(code)


@app.command("inspect-pending", cls=_Command)
def inspect_pending(
    data_dir: DataDir = Path("data_clean"),
    backend: Backend = None,
    id_field: IdField = None,
    field: Fields = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
    first: Annotated[
        int, typer.Option(parser=_whole_number, help="How many ids to list.")
    ] = 10,
    lang: LangOpt = LangChoice.auto,
    verbose: Verbose = False,
) -> None:
    """Show what is pending; safe while a download runs."""
    from .pending_report import inspect_pending as run_inspect

    setup_logging(verbose)
    if backend:
        check_backend(backend)
    catalog = CatalogOptions(id_field or None, parse_field_overrides(field or []))
    code = run_inspect(
        data_dir, backend, catalog, _messages(lang), as_json=as_json, first=first
    )
    raise typer.Exit(code)


@app.command(cls=_Command)
def failures(
    data_dir: DataDir = Path("data_clean"),
    backend: Backend = None,
    id_field: IdField = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array, for scripts.")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header.")] = False,
    lang: LangOpt = LangChoice.auto,
    verbose: Verbose = False,
) -> None:
    """List the images that failed, and the most common reasons; safe while a
    download runs."""
    from .failures_report import Format, show_failures

    setup_logging(verbose)
    if as_json and as_csv:
        raise UsageError("json_and_csv", hint="one_format")
    if backend:
        check_backend(backend)
    output: Format = "json" if as_json else "csv" if as_csv else "table"
    catalog = CatalogOptions(id_field or None)
    code = show_failures(data_dir, backend, catalog, _messages(lang), output=output)
    raise typer.Exit(code)


@app.command(cls=_Command)
def export(
    to: Annotated[
        Path,
        typer.Option(
            "--to", help="Folder for the spec's JSON files (created if missing)."
        ),
    ],
    data_dir: DataDir = Path("data_clean"),
    backend: Backend = None,
    id_field: IdField = None,
    lang: LangOpt = LangChoice.auto,
    verbose: Verbose = False,
) -> None:
    """Write image_mapping.json, pending_tasks.json and failed_images.json from any
    store; safe while a download runs."""
    from .transfer import export_state

    setup_logging(verbose)
    if backend:
        check_backend(backend)
    report = Reporter(_messages(lang), line_writer())
    catalog = CatalogOptions(id_field or None)
    raise typer.Exit(export_state(data_dir, backend, catalog, to, report))


@app.command(cls=_Command)
def migrate(
    source: Annotated[
        str, typer.Option("--from", help="The store that wrote the data directory.")
    ],
    target: Annotated[str, typer.Option("--to", help="The store to convert it to.")],
    data_dir: DataDir = Path("data_clean"),
    id_field: IdField = None,
    lang: LangOpt = LangChoice.auto,
    verbose: Verbose = False,
) -> None:
    """Convert the data directory to another store, in place; a kill part-way
    leaves the old store as it was."""
    from .transfer import migrate_state

    setup_logging(verbose)
    check_backend(source)
    check_backend(target)
    report = Reporter(_messages(lang), line_writer())
    catalog = CatalogOptions(id_field or None)
    raise typer.Exit(migrate_state(data_dir, source, target, catalog, report))


@app.command(cls=_Command)
def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="Folder for the demo catalog and data.")
    ] = Path("imgfetch-demo"),
    products: Annotated[
        int, typer.Option(parser=_whole_number, help="Products in the catalog.")
    ] = 60,
    delay: Annotated[
        float, typer.Option(parser=_number, help="Seconds each image takes.")
    ] = 0.3,
    faults: Annotated[
        float,
        typer.Option(parser=_number, help="Share of first attempts that fail (0..1)."),
    ] = 0.0,
    port: Annotated[
        int | None,
        typer.Option(
            parser=_whole_number,
            help="Port of the demo server (default: the demo's earlier port, else "
            "8765, else any free one).",
            show_default=False,
        ),
    ] = None,
    workers: Workers = ENGINE_DEFAULTS.workers,
    backend: Backend = None,
    progress: Progress = ProgressMode.auto,
    lang: LangOpt = LangChoice.auto,
    verbose: Verbose = False,
) -> None:
    """Serve a generated catalog on 127.0.0.1 and download it: try Ctrl+C and rerun."""
    from .demo import run_demo

    setup_logging(verbose)
    if not 0 <= faults <= 1:
        raise UsageError("faults", value=faults)
    if not delay >= 0:
        raise UsageError("negative", hint="zero_or_more", option="--delay", value=delay)
    _check_range("--products", products, minimum=1, maximum=100_000)
    _check_range("--workers", workers, minimum=1, maximum=512)
    code = run_demo(
        folder,
        products=products,
        delay=delay,
        faults=faults,
        port=port,
        workers=workers,
        progress=progress.value,
        msg=_messages(lang),
        backend=backend and check_backend(backend),
    )
    raise typer.Exit(code)


@app.command(cls=_Command)
def version() -> None:
    """Print the version."""
    print(__version__)


def _common(values: dict[str, Any]) -> dict[str, Any]:
    """The command's parameters that _run_options takes (`--field` is `fields`)."""
    wanted = inspect.signature(_run_options).parameters
    common = {name: values[name] for name in wanted if name in values}
    common["fields"] = values["field"]
    return common


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code; every error family ends here."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args
    msg = Messages(_lang_in(args))
    _tolerate_narrow_encodings()
    command = _click_command(args)
    try:
        result = command.main(args, prog_name="imgfetch", standalone_mode=False)
    except ImgfetchError as exc:
        _error(exc.render(msg), verbose, msg)
        return int(exc.exit_code)
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        if isinstance(exc, BadValue):
            exc.message = exc.text.render(msg)
        # click's own text ("No such option", "Invalid value for") stays English.
        format_message = getattr(exc, "format_message", None)
        message = format_message() if format_message else str(exc)
        _error(msg("err_usage", detail=message), verbose, msg)
        return int(getattr(exc, "exit_code", ExitCode.BAD_INPUT))
    except KeyboardInterrupt:
        return int(ExitCode.SIGINT)
    except Exception as exc:
        _error(msg("err_internal", detail=repr(exc)), verbose, msg)
        return 70
    return result if isinstance(result, int) else 0


def _click_command(args: list[str]) -> Any:
    """The click group typer makes of `app`, with only the command `args` names if
    they start with one: typer builds a command's parameters from its annotations
    at every start, and the other commands' would go unused."""
    named = [
        info
        for info in app.registered_commands
        if args and args[0] == (info.name or _command_name(info.callback))
    ]
    if not named:
        return typer.main.get_command(app)  # help, or an unknown command
    alone = copy.copy(app)
    alone.registered_commands = named
    return typer.main.get_group(alone)


def _command_name(callback: Any) -> str:
    return str(typer.main.get_command_name(callback.__name__))


def _tolerate_narrow_encodings() -> None:
    """Under a GBK or ASCII locale, "✓" cannot be encoded; print "?" rather than
    lose every line after it."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="replace")


def _lang_in(args: list[str]) -> Lang:
    """The --lang of the command line, read before parsing so errors of the
    parsing itself come in that language too."""
    for position, arg in enumerate(args):
        if arg == "--lang" and position + 1 < len(args):
            value = args[position + 1]
        elif arg.startswith("--lang="):
            value = arg.partition("=")[2]
        else:
            continue
        if value == "zh":
            return "zh"
        if value == "en":
            return "en"
    return detect_lang()


def _error(message: str, verbose: bool, msg: Messages) -> None:
    if verbose:
        traceback.print_exc()
    prefix = msg("error_prefix")
    line = " ".join(message.split())  # one line, whatever the cause contained
    try:
        sys.stderr.write(f"imgfetch: {prefix}: {line}\n")
        sys.stderr.flush()
    except OSError:
        pass


def entry() -> None:
    """Run the command line to its end and exit with its code (launch.entry
    calls it once signals are caught)."""
    code = main()
    # An I/O thread stuck on a dead disk (or the catalog reader stuck on a FIFO)
    # cannot be stopped; the state is already saved, so end the process without
    # waiting on it (daemon threads can also crash interpreter shutdown while
    # they hold stdio locks).
    stuck = [
        t
        for t in threading.enumerate()
        if t.daemon and t.name.startswith(THREAD_PREFIX) and t.is_alive()
    ]
    if stuck:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
