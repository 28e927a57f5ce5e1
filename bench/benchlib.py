"""What the Python benchmark scripts beside it share: a free port, the tools they need, and the
JSON line each one prints and appends to the figures file (BENCH_JSON)."""
import json
import shutil
import socket
import sys


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def need(script, tools, hint):
    """Exits naming the first of `tools` not on PATH, with `hint` (how to install it)."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{script}: {tool} not found ({hint})")


def emit(line, path):
    """Prints `line` as JSON and appends it to `path` (the figures file) when one is given."""
    print(json.dumps(line))
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
