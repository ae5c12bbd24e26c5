"""The driver's stderr without the notices Ray's C++ core worker prints about Ray itself.

Ray Data `ray.put`s each actor pool's map function, so the core worker of every driver that runs a
pool logs "Actor with class name ... has constructor arguments in the object store and
max_restarts > 0" at ERROR (ray-project/ray#53727): a line about Ray's internals, not the user's
job, that its C++ logger writes to the process's file descriptor 2, where no Python logging setting
reaches. The same line is in the session's logs/python-core-driver-*.log, so the console loses
nothing by not showing it.

:func:`filter_ray_notices` sends fd 2 through a small child process that copies everything else,
byte for byte and at once. A child, not a thread: when the driver dies (a crash, a kill), the child
still copies the driver's last words, then exits at the end of the pipe. Only the programs call it
(jobs/*.py, python -m carray); the tests call stages in their own process and keep their stderr.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys

#: Lines of Ray's own that the console does not show (a regular expression over bytes).
RAY_NOTICES = rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and max_restarts > 0"

# The child: copies its stdin to its stdout (the terminal's stderr) as it comes, less RAY_NOTICES
# lines. A partial line is held only while it may be a log line ("[2026-..."): a prompt or a "\r"
# progress line passes at once. It ignores Ctrl-C and SIGTERM, which are the driver's to answer.
_CHILD = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
notice, tail = re.compile(sys.argv[1].encode()), b""

def write(data):
    while data:
        data = data[os.write(1, data):]

while chunk := os.read(0, 1 << 16):
    *lines, tail = (tail + chunk).split(b"\n")
    kept = b"".join(line + b"\n" for line in lines if not notice.search(line))
    if tail and not tail.startswith(b"["):
        kept, tail = kept + tail, b""
    write(kept)
write(tail)
"""


def filter_ray_notices() -> None:
    """Route this process's fd 2 through the filtering child for the rest of its life; at exit,
    fd 2 is given back and the child drains the pipe. Anything that fails leaves stderr as it was."""
    if os.name != "posix" or os.environ.get("CARRAY_RAW_STDERR"):
        return
    try:
        read_end, write_end = os.pipe()
        child = subprocess.Popen([sys.executable, "-S", "-c", _CHILD, RAY_NOTICES.decode()], stdin=read_end, stdout=2,
                                 close_fds=True)
    except OSError:
        return
    os.close(read_end)
    sys.stderr.flush()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    atexit.register(_give_back, original, child)


def _give_back(original: int, child: subprocess.Popen) -> None:
    """At exit (after Ray's own exit handler stopped what it started): fd 2 is the terminal's again,
    the pipe ends, and the child finishes copying."""
    sys.stderr.flush()
    os.dup2(original, 2)
    os.close(original)
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:  # a process Ray started still holds the pipe: the child exits with it
        pass
