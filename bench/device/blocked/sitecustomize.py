"""The rehearsal's stand-in for the trimmed Ray of a lent GPU machine (bench/device/pack.py, TRIMMED).

On PYTHONPATH in the toy call (bench/device/call.py --toy), Python loads this in every process, Ray's
workers included: importing a subpackage that pack.py leaves out of the carried Ray fails here as it
would there, so the rehearsal in `make test` catches a job that starts to need one.
"""
import importlib.abc
import sys

BLOCKED = ("ray.rllib", "ray.serve", "ray.llm")


class _Trimmed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
            raise ImportError(f"{name} is trimmed from the Ray carried to the GPU machine (bench/device/pack.py)")
        return None


sys.meta_path.insert(0, _Trimmed())
