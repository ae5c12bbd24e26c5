"""The programs' stderr filter (carray/console.py): Ray's notices about itself dropped, everything
else copied as it comes, a dying driver's last words included. No Ray here: the notice is written
as Ray's C++ logger writes it."""
import subprocess
import sys
import textwrap

from support.jobs import REPO

NOTICE = (b"[2026-12-05 00:39:06,637 E 26338 26338] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(Restorer))' "
          b"and ID: '41932f37' has constructor arguments in the object store and max_restarts > 0. If the arguments in the "
          b"object store go out of scope or are lost, the actor restart will fail.\n")


def run_program(body: str) -> subprocess.CompletedProcess:
    """A program that filters its stderr as jobs/*.py do, then runs `body`; its stderr captured."""
    code = "import os, sys\nfrom carray.console import filter_ray_notices\nfilter_ray_notices()\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)


def test_rays_notice_is_dropped_and_the_rest_copied_in_order():
    done = run_program(f"""
        print("error: before", file=sys.stderr, flush=True)
        os.write(2, {NOTICE!r})
        os.write(2, b"[2026-12-05 00:39:07,001 E 1 1] core_worker.cc:99: a real error of Ray's\\n")
        print("after", file=sys.stderr)
        raise SystemExit(4)
    """)
    assert done.returncode == 4
    assert done.stderr == b"error: before\n[2026-12-05 00:39:07,001 E 1 1] core_worker.cc:99: a real error of Ray's\nafter\n"


def test_a_traceback_and_a_partial_line_reach_the_console():
    done = run_program("""
        os.write(2, b"restoring 50%\\r")
        raise RuntimeError("the job's own failure")
    """)
    assert done.returncode == 1
    assert done.stderr.startswith(b"restoring 50%\r")
    assert b"RuntimeError: the job's own failure" in done.stderr


def test_a_driver_killed_mid_line_still_gets_its_last_words_out():
    """No exit handler runs (os._exit, as a kill or a crash): the child copies what was written."""
    done = run_program(f"""
        os.write(2, {NOTICE!r} + b"Fatal Python error: Segmentation fault\\n\\nCurrent thread 0x1 (most recent call first):")
        os._exit(139)
    """)
    assert done.returncode == 139
    assert done.stderr == b"Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):"
