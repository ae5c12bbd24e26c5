"""The carry for a lent GPU machine: what it lacks, packed into git-ignored folders under .device/.

The device (docs/benchmarks.md, "The prepared GPU call") has PyTorch, CUDA and Python 3.12 but no Ray
and no network, and each call takes at most 64 MiB of working tree, the project's tracked files
included (about 20 MB). So the work is one call and, when device time is left, a second one back to
back, each carrying one folder:

  .device/call1/site.tar.xz  Ray 2.60 for CPython 3.12 (manylinux x86_64) trimmed of what the jobs
                             never load (TRIMMED: its Java jars alone are 32 MB of the 79 MB wheel;
                             raylet, GCS server and _raylet.so stay), and the few packages Ray needs
                             that the device's image lacks; xz packs them tighter than the wheels' zip.
  .device/call1/images.tar   the clean colour training sources that fit beside it, losslessly packed:
                             McMaster (never a JPEG) and CBSD68 as lossless WebP (0.5-0.65x their
                             TIF/PNG bytes).
  .device/call2/images.tar   the sets that did not fit call 1, in IMAGE_SETS order: CBSD432 as the
                             JPEG originals they are (their own bytes), Urban100 if room is left.

    python bench/device/pack.py                  # both calls' folders, from ../shared/data and the registry

Checks made while packing (any failure exits non-zero): every carried wheel is tagged cp312
manylinux x86_64 or pure Python; `pip install --dry-run` of ray[data,train] and simplejpeg for Python 3.12 resolves,
and what it resolves is carried unless the device's image has it (DEVICE_PACKAGES, from the device
tool's package list); each folder fits the call's budget beside the tracked files. That the jobs
import nothing TRIMMED is checked by the call's rehearsal in `make test` (tests/test_device.py),
which blocks those packages in every process of a real run.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / ".device"
SHARED = REPO.parent / "shared" / "data"
RAY = "ray[data,train]==2.60.0"
#: What the jobs import beyond Ray that the device's image may lack (pyproject.toml's dependencies).
REQUIREMENTS = (RAY, "simplejpeg==1.9.0")
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux1_x86_64"]
#: Subpackages of Ray that the jobs never load: Java, RLlib, Serve, LLM serving, the dashboard's web UI.
TRIMMED = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/")
#: Python packages of the device's image (the device tool's KINDS.md, read 2026-11-17), normalized.
DEVICE_PACKAGES = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
#: A call's working tree (64 MiB) less the tracked files (measured by `tracked_bytes`) and a margin.
CALL_BYTES = 64 * 2**20
MARGIN = 2 * 2**20
#: Training sources in the order they are packed until the budget is spent, and how.
IMAGE_SETS = (("McMaster", "webp"), ("CBSD432", "bytes"), ("CBSD68", "webp"), ("Urban100", "webp"))


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tracked_bytes() -> int:
    """What every call carries anyway: the project's tracked files."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def budget() -> int:
    return CALL_BYTES - tracked_bytes() - MARGIN


def resolve_for_device() -> list[dict]:
    """pip's resolution of REQUIREMENTS for CPython 3.12 on manylinux x86_64 (a dry run: the
    check that the set resolves), as [{name, version, url}]."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report),
                   "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--target", str(Path(tmp) / "t"),
                   *[arg for p in PLATFORMS for arg in ("--platform", p)], *REQUIREMENTS]
        subprocess.run(command, check=True)
        items = json.loads(report.read_text())["install"]
    return [{"name": normalize(i["metadata"]["name"]), "version": i["metadata"]["version"], "url": i["download_info"]["url"]} for i in items]


def check_tag(wheel: str) -> None:
    """cp312 manylinux x86_64, or pure Python: what the device's Python 3.12 on x86-64 loads."""
    tags = wheel[:-4].split("-")[-3:]
    python, abi, platform = tags
    pure = abi == "none" and platform == "any" and "py3" in python.split(".")
    native = python == "cp312" and abi in ("cp312", "abi3") and "manylinux" in platform and platform.endswith("x86_64")
    if not (pure or native):
        raise SystemExit(f"pack: {wheel} is not for CPython 3.12 on manylinux x86_64 ({python}-{abi}-{platform})")


def download(names: list[str], folder: Path) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[arg for p in PLATFORMS for arg in ("--platform", p)], "-d", str(folder), *names]
    subprocess.run(command, check=True)
    return sorted(folder.glob("*.whl"))


def pack_ray(out: Path) -> dict:
    resolved = resolve_for_device()
    carried = [r for r in resolved if r["name"] not in DEVICE_PACKAGES]
    print(f"pack: {' '.join(REQUIREMENTS)} resolve for Python 3.12 to {len(resolved)} packages; the device lacks {len(carried)}: "
          + ", ".join(f"{r['name']}=={r['version']}" for r in carried))
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download([f"{r['name']}=={r['version']}" for r in carried], Path(tmp) / "wheels")
        site = Path(tmp) / "site"
        trimmed = 0
        for wheel in wheels:
            check_tag(wheel.name)
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    if info.filename.startswith(TRIMMED):
                        trimmed += info.file_size
                        continue
                    z.extract(info, site)
        for script in site.glob("*.data/scripts/*"):  # console scripts: the jobs run as python jobs/*.py
            script.unlink()
        out.mkdir(parents=True, exist_ok=True)
        archive = out / "site.tar.xz"
        # Executable bits kept: raylet and gcs_server are started as programs.
        with tarfile.open(archive, "w:xz", preset=9) as tar:
            tar.add(site, arcname="site")
    manifest = {"requirements": list(REQUIREMENTS), "python": "3.12", "carried": carried, "trimmed": list(TRIMMED),
                "trimmed_bytes": trimmed, "archive_bytes": archive.stat().st_size, "wheels": [w.name for w in wheels]}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def webp_lossless(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "WEBP", lossless=True, quality=100, method=4)
        return buf.getvalue()


def pack_images(out: Path, limit: int, sets=IMAGE_SETS, shared: Path = SHARED) -> dict:
    """Clean colour sources (folders of `shared`) into one tar until `limit` bytes, each set whole or
    not at all (a set cut in half would skew what the model sees)."""
    out.mkdir(parents=True, exist_ok=True)
    packed, used = {}, 0
    members = []
    for name, how in sets:
        folder = shared / name
        if not folder.is_dir():
            print(f"pack: {folder} not found; skipped")
            continue
        files = [(f"{name}/{p.stem}.webp", webp_lossless(p)) if how == "webp" else (f"{name}/{p.name}", p.read_bytes())
                 for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
        size = sum(len(data) for _, data in files) + 1024 * len(files)  # tar headers
        if used + size > limit:
            print(f"pack: {name} ({size / 1e6:.1f} MB) does not fit beside the rest ({used / 1e6:.1f} of {limit / 1e6:.1f} MB); left out")
            continue
        members += files
        packed[name] = {"files": len(files), "bytes": size, "as": "lossless WebP" if how == "webp" else "their own JPEG bytes"}
        used += size
    with tarfile.open(out / "images.tar", "w") as tar:
        for member, data in members:
            info = tarfile.TarInfo(f"images/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / "IMAGES.json").write_text(json.dumps({"sets": packed, "bytes": (out / "images.tar").stat().st_size}, indent=1))
    return packed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CARRY)
    parser.add_argument("--shared", type=Path, default=SHARED, help="where the image sets are (default: ../shared/data beside the checkout)")
    args = parser.parse_args(argv)
    room = budget()
    print(f"pack: a call carries {CALL_BYTES / 2**20:.0f} MiB; the tracked files take {tracked_bytes() / 1e6:.1f} MB; "
          f"{room / 1e6:.1f} MB left for each call's folder")
    for stale in ("call1", "call2"):
        shutil.rmtree(args.out / stale, ignore_errors=True)
    manifest = pack_ray(args.out / "call1")
    size = manifest["archive_bytes"]
    print(f"pack: call1/site.tar.xz {size / 1e6:.1f} MB ({manifest['trimmed_bytes'] / 1e6:.0f} MB of Ray trimmed: {', '.join(TRIMMED)})")
    if size > room:
        raise SystemExit(f"pack: the Ray carry ({size / 1e6:.1f} MB) does not fit a call ({room / 1e6:.1f} MB)")
    first = pack_images(args.out / "call1", room - size, shared=args.shared)
    second = pack_images(args.out / "call2", room, [s for s in IMAGE_SETS if s[0] not in first], shared=args.shared)
    for call, packed in (("call1", first), ("call2", second)):
        total = sum((args.out / call / f).stat().st_size for f in ("site.tar.xz", "images.tar") if (args.out / call / f).is_file())
        print(f"pack: {call}: {total / 1e6:.1f} MB of {room / 1e6:.1f}; images: "
              + (", ".join(f"{k} {v['files']} files {v['bytes'] / 1e6:.1f} MB ({v['as']})" for k, v in packed.items()) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
