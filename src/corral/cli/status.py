"""``corral status``: what a broker is doing, from the terminal.

    corral status FILE|ADDRESS            a report: counts, rates, queues, workers, recent failures
    corral status FILE --json             the status dict (``Executor.status()``'s) as JSON
    corral status FILE --watch [SECONDS]  the report again every SECONDS (default 2) until Ctrl-C
    corral status --watch FILE            the same, every 2 seconds

FILE is a connection file (the client key in it is used), or an executor's status file
(``Executor(status_file=...)``); ADDRESS takes ``--keys`` or ``--insecure`` as
``corral worker`` does.  A broker that does not answer within ``--timeout`` is a
one-line error and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from .argtypes import add_broker_arguments, broker, seconds

DEFAULT_WATCH = 2.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def add_parser(sub) -> argparse.ArgumentParser:
    """``corral status``'s arguments."""
    p = sub.add_parser("status", help="show what a broker is doing: workers, queues, counts, rates")
    add_broker_arguments(p, "client", "a connection file (its client key is used), or an executor's status file "
                                      "(Executor(status_file=...))", optional=True)  # or after --watch: watched()
    p.add_argument("--json", action="store_true", help="print the status as JSON (one object per line with --watch)")
    p.add_argument("--watch", type=_seconds_or_target, nargs="?", const=DEFAULT_WATCH, default=None,
                   metavar="SECONDS", help=f"refresh every SECONDS (default {DEFAULT_WATCH:g}) until Ctrl-C")
    p.add_argument("--timeout", type=seconds(), default=10.0, metavar="SECONDS",
                   help="give up on a broker that does not answer within this long (default %(default)s)")
    # FILE|ADDRESS is optional to argparse only (it may come as --watch's value): the usage says it is not.
    p.usage = p.format_usage().removeprefix("usage: ").rstrip().replace("[FILE|ADDRESS]", "FILE|ADDRESS")
    return p


class _NotSeconds(str):
    """A ``--watch`` value that is not a number of seconds: the FILE|ADDRESS, if none follows it."""

    problem = ""


def _seconds_or_target(text: str) -> float | _NotSeconds:
    try:
        return seconds()(text)
    except argparse.ArgumentTypeError as exc:
        word = _NotSeconds(text)
        word.problem = str(exc)
        return word


def watched(args: argparse.Namespace) -> None:
    """``--watch FILE``: argparse took FILE for SECONDS, since SECONDS may be left out; it is the FILE
    where no other follows (a number of seconds wrong otherwise).  Usage errors as argparse's."""
    if isinstance(args.watch, _NotSeconds):
        if args.address is not None:
            args.parser.error(f"argument --watch: {args.watch.problem}")
        try:
            args.address = broker(str(args.watch))
        except argparse.ArgumentTypeError as exc:
            args.parser.error(f"argument FILE|ADDRESS: {exc}")
        args.watch = DEFAULT_WATCH
    elif args.address is None:
        args.parser.error("the following arguments are required: FILE|ADDRESS")


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status once, or every ``--watch`` seconds; exit 1 if the broker does not answer."""
    from ..client.statusclient import StatusClient, StatusRefused
    from ..errors import AddressError
    from ..status import report

    watched(args)
    try:
        client = StatusClient(args.address, keys=args.keys, insecure=args.insecure)
    except (AddressError, ValueError) as exc:
        args.parser.error(f"argument FILE|ADDRESS: {exc}")
    tty = sys.stdout.isatty()
    try:
        while True:
            status = client.fetch(args.timeout)
            if args.json:
                text = json.dumps(status, separators=(",", ":")) if args.watch else json.dumps(status, indent=1)
            else:
                text = report(status)
            if args.watch and tty and not args.json:
                text = CLEAR + text
            elif args.watch and not args.json:
                text += "\n"
            print(text, flush=True)
            if not args.watch:
                return 0
            client.wait(args.watch)
    except (TimeoutError, StatusRefused) as exc:
        print(f"corral status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if args.watch else 130
    except BrokenPipeError:  # `corral status ... | head`
        sys.stderr.close()
        return 0
    finally:
        client.close()
