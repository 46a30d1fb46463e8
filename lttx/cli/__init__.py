"""
The ``lttx`` command: LTtx for people and shell scripts.

::

    lttx put pos '{"600000.SH": 100}'
    lttx get pos                      # {"600000.SH": 100}
    lttx put bars --csv bars.csv      # a pandas DataFrame
    lttx get bars [--csv]             # a table on a terminal, or CSV
    lttx get pos --revision           # {"value": {"600000.SH": 100}, "revision": 1}
    lttx put lease '"me"' --ttl 5 --if-revision 0
    lttx incr fills 2                 # 2
    lttx ttl lease                    # 4.99
    lttx keys 'p*'
    lttx del pos
    lttx sub hq_center                # one JSON line per message, until Ctrl-C
    lttx sub hq_center --history 100  # the last 100 retained first (or --since SEQ,
                                      # --last-values)
    lttx watch 'pos_*'                # one JSON line per change, until Ctrl-C
    lttx push hq_center 600000.SH 10.23
    lttx publish orders order-17 '{"side": "buy"}'   # waits; prints the seq
    lttx upload ./report.csv
    lttx download report.csv ./downloads/
    lttx files
    lttx status [--json]

The daemon's address and token come from ``--host``/``--port``/``--token``
or the environment (``LTTX_HOST``, ``LTTX_PORT``, ``LTTX_TOKEN``); ``--tls``
and ``--ca PEM`` (``LTTX_TLS=1``, ``LTTX_CA``) reach a daemon on TLS.

Values are printed as JSON, one document per line.  JSON has no bytes and no
non-string keys, so two objects stand for them, in output and in ``put``
input alike: ``{"$bytes": "<base64>"}`` is a bytes value, and
``{"$map": [[key, value], ...]}`` a dict with a key that is not a string
(or a dict whose only key is ``"$bytes"``, ``"$map"`` or ``"$ext"``).  A
DataFrame, series or array inside a value is ``{"$ext": [kind, "<base64>"]}``,
its encoded bytes (``docs/protocol.md``); ``put`` stores them unchanged.

An error is one line on stderr and an exit status that says its kind:
:data:`EXIT_ERROR`, :data:`EXIT_USAGE`, :data:`EXIT_CONNECTION`,
:data:`EXIT_AUTH`, :data:`EXIT_NOT_FOUND`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any, Callable, NoReturn, Optional, Sequence

from .._version import DEFAULT_PORT, __version__
from .output import (
    UsageError,
    dumps,
    escape_formatting,
    parse_json_argument,
    render_status,
    shown_name,
)
from ..errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    LTtxError,
    MissedChanges,
    NotFound,
    PermissionDenied,
    TimeoutError,
)

#: Exit statuses, one per kind of failure, so a script can tell them apart.
EXIT_OK = 0
EXIT_ERROR = 1  #: the daemon refused the request (wrong type, bad index...)
EXIT_USAGE = 2  #: bad arguments or environment (argparse's own status)
EXIT_CONNECTION = 3  #: the daemon cannot be reached, or the connection was lost
EXIT_AUTH = 4  #: wrong token, or not allowed
EXIT_NOT_FOUND = 5  #: no such variable or file (on the daemon or locally)
EXIT_INTERRUPTED = 130  #: Ctrl-C (but ``sub`` ends normally on Ctrl-C)

DEFAULT_HOST = "127.0.0.1"
#: Seconds the command waits for the daemon: its own default, shorter than a
#: program's client (lttx.client.DEFAULT_TIMEOUT).
CLI_TIMEOUT = 10.0

_MISSING = object()


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (``lttx: error: ...``), status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- values as JSON -----------------------------------------------------------


class Context:
    """What a command needs: its arguments, a way to connect, its output."""

    def __init__(self, args: argparse.Namespace, out: IO[str], err: IO[str]) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.host, self.port, self.token, self.timeout = _address(args)
        self.ca: Optional[str] = getattr(args, "ca", None) or os.environ.get("LTTX_CA") or None
        self.tls = bool(getattr(args, "tls", False) or self.ca
                        or os.environ.get("LTTX_TLS", "") not in ("", "0"))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> Any:
        from ..client import connect

        return connect(self.host, self.port, token=self.token, timeout=self.timeout,
                       tls=self.tls, ca=self.ca)

    def print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def progress(self) -> bool:
        """Progress bars on stderr: asked for, or stderr is a terminal."""
        if self.args.progress is not None:
            return bool(self.args.progress)
        return self.err.isatty()


def _address(args: argparse.Namespace) -> tuple[str, int, Optional[str], float]:
    host = getattr(args, "host", None) or os.environ.get("LTTX_HOST") or DEFAULT_HOST
    port_text = getattr(args, "port", None) or os.environ.get("LTTX_PORT") or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"the port must be a number, not {port_text!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"the port must be between 1 and 65535, not {port}")
    token = getattr(args, "token", None) or os.environ.get("LTTX_TOKEN") or None
    timeout = getattr(args, "timeout", None) or CLI_TIMEOUT
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    return host, port, token, timeout


def cmd_get(ctx: Context) -> int:
    from ..client.dataframes import frame_text, is_frame

    with ctx.connect() as client:
        if ctx.args.revision:
            value, revision = client.get(ctx.args.name, _MISSING, revision=True)
        else:
            value = client.get(ctx.args.name, _MISSING)
    if value is _MISSING:
        raise NotFound(f"no variable named {ctx.args.name!r}")
    if is_frame(value):  # a table for people, or CSV
        ctx.print(frame_text(value, ctx.args.csv, ctx.out.isatty()))
    elif ctx.args.csv:
        raise UsageError(f"{ctx.args.name!r} holds no DataFrame, series or array: "
                         "--csv has nothing to write")
    else:
        ctx.print(dumps({"value": value, "revision": revision} if ctx.args.revision else value))
    return EXIT_OK


def cmd_put(ctx: Context) -> int:
    if (ctx.args.csv is None) == (ctx.args.json is None):
        raise UsageError("put takes a JSON value or --csv FILE (one of the two)")
    if ctx.args.csv is not None:
        from ..client.dataframes import read_csv

        value = read_csv(ctx.args.csv)
    else:
        value = parse_json_argument(ctx.args.json, "the value")
    with ctx.connect() as client:
        client.put(ctx.args.name, value, if_revision=ctx.args.if_revision, ttl=ctx.args.ttl)
    return EXIT_OK


def cmd_incr(ctx: Context) -> int:
    by = parse_json_argument(ctx.args.by, "the amount")
    if type(by) not in (int, float):
        raise UsageError(f"the amount must be a number, not {ctx.args.by!r}")
    with ctx.connect() as client:
        ctx.print(dumps(client.incr(ctx.args.name, by)))
    return EXIT_OK


def cmd_ttl(ctx: Context) -> int:
    with ctx.connect() as client:
        left = client.ttl(ctx.args.name)
        if left is None and not client.exists(ctx.args.name):
            raise NotFound(f"no variable named {ctx.args.name!r}")
    ctx.print(dumps(left))  # null: it has no expiry
    return EXIT_OK


def cmd_keys(ctx: Context) -> int:
    with ctx.connect() as client:
        names = client.keys(ctx.args.pattern)
    if ctx.args.json:
        ctx.print(escape_formatting(json.dumps(names, ensure_ascii=False)))
    else:
        for name in names:
            ctx.print(shown_name(name))
    return EXIT_OK


def cmd_del(ctx: Context) -> int:
    with ctx.connect() as client:
        existed = client.delete(ctx.args.name)
    if not existed:
        raise NotFound(f"no variable named {ctx.args.name!r}")
    return EXIT_OK


def cmd_sub(ctx: Context) -> int:
    args = ctx.args
    client = ctx.connect()
    try:
        client.subscribe(args.channels, password=args.password, conflate=args.conflate,
                         history=args.history, since=args.since,
                         last_values=args.last_values, on_gap=_print_gap(ctx))
        # On stderr, so stdout holds messages only; a script can wait for it.
        ctx.err.write(f"lttx: subscribed to {args.channels} at {ctx.where}; "
                      "Ctrl-C to stop\n")
        ctx.err.flush()
        received = 0
        while args.count is None or received < args.count:
            message = client.Q.get()
            ctx.print(dumps({"channel": message.channel, "seq": message.seq,
                             "key": message.key, "data": message.data}))
            received += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how `sub` is meant to end
    finally:
        client.close()
    return EXIT_OK


def _print_gap(ctx: Context) -> Callable[[str, Any, Any], None]:
    """``sub``'s on_gap: one line on stderr per gap the daemon reports."""
    def on_gap(channel: str, first: Any, last: Any) -> None:
        ctx.err.write(f"lttx: gap on {channel}: messages {first if first is not None else '?'}"
                      f" to {last if last is not None else '?'} will not arrive\n")
        ctx.err.flush()
    return on_gap


def cmd_watch(ctx: Context) -> int:
    args = ctx.args
    client = ctx.connect()
    try:
        watch = client.watch(args.pattern)
        ctx.err.write(f"lttx: watching {args.pattern} at {ctx.where}; Ctrl-C to stop\n")
        ctx.err.flush()
        received = 0
        while args.count is None or received < args.count:
            try:
                change = watch.get()
            except MissedChanges as e:
                # On stdout too: a script reading the lines cannot overlook it.
                ctx.err.write(f"lttx: {e.message}\n")
                ctx.print(dumps({"name": None, "op": "missed", "args": [e.first, e.last],
                                 "revision": 0}))
                continue
            ctx.print(dumps({"name": change.name, "op": change.op, "args": list(change.args),
                             "revision": change.revision}))
            received += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is how `watch` is meant to end
    finally:
        client.close()
    return EXIT_OK


def cmd_publish(ctx: Context) -> int:
    args = ctx.args
    data = parse_json_argument(args.data, "DATA")
    with ctx.connect() as client:
        ctx.print(str(client.publish(args.key, data, args.channel)))
    return EXIT_OK


def cmd_push(ctx: Context) -> int:
    args = ctx.args
    data = parse_json_argument(args.data, "DATA") if args.json else args.data
    with ctx.connect() as client:
        client.push(args.key, data, args.channel)
        # push does not wait; close() hands the frame to the transport and
        # closes only after it has been written.
    return EXIT_OK


def cmd_upload(ctx: Context) -> int:
    if not os.path.isfile(ctx.args.path):
        raise FileNotFoundError(f"no such file: {ctx.args.path}")
    with ctx.connect() as client:
        info = client.send_file(ctx.args.path, name=ctx.args.name, progress=ctx.progress())
    ctx.print(dumps(info))
    return EXIT_OK


def cmd_download(ctx: Context) -> int:
    with ctx.connect() as client:
        info = client.recv_file(ctx.args.name, ctx.args.dest, progress=ctx.progress())
    ctx.print(dumps(info))
    return EXIT_OK


def cmd_files(ctx: Context) -> int:
    with ctx.connect() as client:
        files = client.list_files()
    if ctx.args.json:
        ctx.print(dumps(files))
        return EXIT_OK
    import time

    for info in files:
        mtime = info.get("mtime")
        when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
                if isinstance(mtime, (int, float)) else "-")
        ctx.print(f"{info.get('size', '-'):>12}  {when}  {shown_name(str(info.get('name')))}")
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    with ctx.connect() as client:
        status = client.status()
    if ctx.args.json:
        ctx.print(dumps(status))
    else:
        ctx.print(render_status(status, ctx.where))
    return EXIT_OK


# -- the parser and main ------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``lttx`` argument parser."""
    # The connection options are accepted before and after the sub-command;
    # SUPPRESS keeps a sub-command's absent option from hiding a given one.
    common = _Parser(add_help=False)
    group = common.add_argument_group("daemon")
    group.add_argument("--host", default=argparse.SUPPRESS,
                       help=f"the daemon's address (env LTTX_HOST; default {DEFAULT_HOST})")
    group.add_argument("--port", default=argparse.SUPPRESS,
                       help=f"the daemon's port (env LTTX_PORT; default {DEFAULT_PORT})")
    group.add_argument("--token", default=argparse.SUPPRESS,
                       help="the daemon's token (env LTTX_TOKEN)")
    group.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                       help=f"seconds to wait for the daemon (default {CLI_TIMEOUT:g})")
    group.add_argument("--tls", action="store_true", default=argparse.SUPPRESS,
                       help="speak TLS to a daemon on an ssl: endpoint (env LTTX_TLS=1)")
    group.add_argument("--ca", default=argparse.SUPPRESS, metavar="PEM",
                       help="trust the CA(s) in this file instead of the system's "
                            "(env LTTX_CA; implies --tls)")

    parser = _Parser(
        prog="lttx", parents=[common],
        description="Look at and change a running LTtx daemon: variables, channels, "
                    "files, status.",
        epilog="Values are JSON; bytes are {\"$bytes\": \"<base64>\"}. Exit status: 0 ok, "
               "1 refused by the daemon, 2 usage, 3 connection, 4 auth, 5 not found.")
    parser.add_argument("--version", action="version", version=f"lttx {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, handler: Callable[[Context], int], help: str) -> Any:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler, progress=None)
        return sub

    sub = command("get", cmd_get, "print a variable's value as JSON (a DataFrame as a table)")
    sub.add_argument("name")
    sub.add_argument("--csv", action="store_true",
                     help="print a DataFrame, series or array as CSV")
    sub.add_argument("--revision", action="store_true",
                     help='print {"value": ..., "revision": N}')
    sub = command("put", cmd_put, "set a variable to a JSON value, or a CSV file's DataFrame")
    sub.add_argument("name")
    sub.add_argument("json", metavar="JSON", nargs="?", default=None)
    sub.add_argument("--csv", metavar="FILE", default=None,
                     help="store this CSV file (- for stdin) as a pandas DataFrame")
    sub.add_argument("--ttl", type=float, default=None, metavar="S",
                     help="the variable expires S seconds from now")
    sub.add_argument("--if-revision", type=int, default=None, metavar="R",
                     help="only if the variable is at revision R (0: only if absent)")
    sub = command("incr", cmd_incr, "add to a number variable (created at 0); print the result")
    sub.add_argument("name")
    sub.add_argument("by", nargs="?", default="1", metavar="BY")
    sub = command("ttl", cmd_ttl, "print the seconds until a variable expires (null: never)")
    sub.add_argument("name")
    sub = command("keys", cmd_keys, "list variable names matching a glob pattern")
    sub.add_argument("pattern", nargs="?", default="*")
    sub.add_argument("--json", action="store_true", help="print one JSON array")
    sub = command("del", cmd_del, "delete a variable")
    sub.add_argument("name")
    sub = command("sub", cmd_sub,
                  "print the messages of channels as JSON lines, until Ctrl-C")
    sub.add_argument("channels", metavar="CHANNEL", help="a channel, or several joined by @")
    sub.add_argument("--password", default=None, help="the channel's password")
    sub.add_argument("--conflate", action="store_true",
                     help="keep only the newest message per key while lagging")
    sub.add_argument("--count", type=int, default=None, metavar="N",
                     help="stop after N messages")
    start = sub.add_mutually_exclusive_group()
    start.add_argument("--history", type=int, default=None, metavar="N",
                       help="first the channel's last N retained messages")
    start.add_argument("--since", type=int, default=None, metavar="SEQ",
                       help="first the retained messages after seq SEQ")
    sub.add_argument("--last-values", action="store_true",
                     help="first the newest message of every key the channel carried")
    sub = command("watch", cmd_watch,
                  "print every change of the variables matching a pattern as JSON lines")
    sub.add_argument("pattern", metavar="PATTERN", help="a glob pattern of variable names")
    sub.add_argument("--count", type=int, default=None, metavar="N",
                     help="stop after N changes")
    sub = command("publish", cmd_publish,
                  "publish a message on a channel, wait for the daemon, print its seq")
    sub.add_argument("channel")
    sub.add_argument("key")
    sub.add_argument("data", help="a JSON value")
    sub = command("push", cmd_push, "push a message on a channel")
    sub.add_argument("channel")
    sub.add_argument("key")
    sub.add_argument("data")
    sub.add_argument("--json", action="store_true",
                     help="DATA is a JSON value (default: a string)")

    def progress_options(sub: Any) -> None:
        bars = sub.add_mutually_exclusive_group()
        bars.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show a progress bar (default: when stderr is a terminal)")
        bars.add_argument("--no-progress", "-q", dest="progress", action="store_false",
                          default=None, help="no progress bar")

    sub = command("upload", cmd_upload, "upload a file")
    sub.add_argument("path")
    sub.add_argument("--name", default=None, help="store it under this name")
    progress_options(sub)
    sub = command("download", cmd_download, "download a file")
    sub.add_argument("name")
    sub.add_argument("dest", nargs="?", default=".", help="a folder or a file path")
    progress_options(sub)
    sub = command("files", cmd_files, "list the daemon's files")
    sub.add_argument("--json", action="store_true", help="print one JSON array")
    sub = command("status", cmd_status,
                  "show connections, channels, variables, journal, files, uptime")
    sub.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _exit_status(error: BaseException) -> int:
    if isinstance(error, (AuthError, PermissionDenied)):
        return EXIT_AUTH
    if isinstance(error, (ConnectError, ConnectionLost, TimeoutError)):
        return EXIT_CONNECTION
    if isinstance(error, (NotFound, FileNotFoundError)):
        return EXIT_NOT_FOUND
    return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    if isinstance(error, LTtxError):
        text = error.message
    elif isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = str(error) or error.__class__.__name__
    return " ".join(text.split())  # one line, whatever the message held


def main(argv: Optional[Sequence[str]] = None, out: Optional[IO[str]] = None,
         err: Optional[IO[str]] = None) -> int:
    """
    Run the ``lttx`` command; its exit status.

    :param argv: the arguments (``sys.argv[1:]`` when None).
    :param out: where results go (``sys.stdout``).
    :param err: where errors and progress go (``sys.stderr``).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors end here
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return int(args.handler(Context(args, out, err)))
    except UsageError as e:
        err.write(f"lttx: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.write("lttx: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`lttx sub ch | head -3`): nothing to say.
        _silence_stdout()
        return EXIT_OK
    except (LTtxError, OSError) as e:
        err.write(f"lttx: {_one_line(e)}\n")
        return _exit_status(e)
    except Exception as e:
        # A bug of ours: still one line, never a traceback for a person at a shell.
        err.write(f"lttx: internal error: {e.__class__.__name__}: {_one_line(e)}\n")
        return EXIT_ERROR


def _silence_stdout() -> None:
    # Python flushes stdout at exit; on a closed pipe that would print a
    # second error, so point it at /dev/null first.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file: nothing will be flushed to a pipe


if __name__ == "__main__":
    sys.exit(main())
