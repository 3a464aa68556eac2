"""How every MEG CLI turns an error into one line: :func:`run_cli` (exit codes), :func:`describe_rpc_error`."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import grpc

from shared.rpc.security import ADMIN_TOKEN_ENV, UE_TOKEN_ENV


def run_cli(prog: str, body: Callable[[], int], describe: Callable[[BaseException], str | None]) -> int:
    """Run a CLI command body with the error handling every MEG CLI shares.

    ``describe(exc)`` gives the one line for an expected error (None: not expected, re-raised). Ctrl-C prints
    one line and exits 130; a closed stdout (``| head``) exits quietly; runtime errors exit 1 (argparse's
    usage errors, raised before this, stay 2).

    Ctrl-C works however the CLI was started: a process started from a background, non-interactive shell
    inherits SIGINT *ignored* (and possibly blocked), and Python then installs no handler of its own; so this
    installs Python's default handler and unblocks the signal first (main thread only).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        return body()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away: nothing more to say; keep Python from complaining at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except Exception as exc:
        line = describe(exc)
        if line is None:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 1



def describe_auth_error(exc: grpc.RpcError) -> str | None:
    """One line for the CLI when a call failed for lack of trust (bad token, TLS handshake), else None."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"not authenticated: {details} (check --token-file / {UE_TOKEN_ENV} or --admin-token-file / {ADMIN_TOKEN_ENV})"
    low = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(s in low for s in ("ssl", "tls", "handshake", "certificate")):
        return f"TLS handshake failed ({details}); check --tls-ca/--tls-cert/--tls-key and the server's certificate"
    return None


def describe_rpc_error(exc: grpc.RpcError, unreachable: str) -> str:
    """The one line a CLI prints for a failed RPC: the auth error, ``unreachable`` for UNAVAILABLE (with the
    details after a colon when ``unreachable`` ends with one), else ``CODE: details``."""
    auth = describe_auth_error(exc)
    if auth:
        return auth
    code, details = exc.code(), exc.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{unreachable} {details}" if unreachable.endswith(":") else unreachable
    return f"{code.name}: {details}"
