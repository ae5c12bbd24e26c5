"""What a full run would take and cost, from a preview's measured rate and the published figures.
No Ray here. The figures and prices are the ones docs/cost.md explains; prices are assumptions."""
from __future__ import annotations

# Published rates (docs/cost.md, docs/benchmarks.md): the infer job on one H100 as measured on
# 2026-11-26 (fp16, one GPU actor, PNG outputs), and the shipped network alone on it (fp16, tile batch 32).
H100_JOB_MP_S = 13.4
H100_NETWORK_MP_S = 198.0
# On-demand list prices of late 2026 as an order of magnitude, not quotes (docs/cost.md).
GPU_HOUR_USD = (2.50, 4.00)
VCPU_HOUR_USD = (0.04, 0.05)


def hours(megapixels: float, rate: float) -> float | None:
    return megapixels / rate / 3600 if rate > 0 else None


def dollars(device_hours: float | None, devices: float, price: tuple[float, float]) -> list[float] | None:
    if device_hours is None:
        return None
    return [round(device_hours * devices * p, 4) for p in price]


def estimate(*, megapixels: float, rate_here: float, gpus_here: float, cpus_here: float, listing_seconds: float) -> dict:
    """The full run's time and cost: on this cluster at the rate the preview measured, and on one
    H100 node at the published rates. `megapixels`: the estimated megapixels to restore."""
    here_hours = hours(megapixels, rate_here)
    devices, price, unit = (gpus_here, GPU_HOUR_USD, "GPU") if gpus_here else (cpus_here, VCPU_HOUR_USD, "vCPU")
    devices = int(devices) if float(devices).is_integer() else devices
    return {
        "megapixels_to_restore": round(megapixels, 1),
        "this_cluster": {
            "megapixels_per_second": round(rate_here, 4), "devices": devices, "device": unit,
            "price_per_device_hour_usd": list(price), "listing_seconds": round(listing_seconds, 1),
            "hours": None if here_hours is None else round(here_hours + listing_seconds / 3600, 6),
            "dollars": dollars(here_hours, devices, price),
        },
        "h100_job_as_measured": _h100(megapixels, H100_JOB_MP_S),
        "h100_network_rate": _h100(megapixels, H100_NETWORK_MP_S),
    }


def _h100(megapixels: float, rate: float) -> dict:
    gpu_hours = hours(megapixels, rate)
    return {"megapixels_per_second": rate, "devices": 1, "device": "GPU", "price_per_device_hour_usd": list(GPU_HOUR_USD),
            "hours": round(gpu_hours, 6), "dollars": dollars(gpu_hours, 1, GPU_HOUR_USD)}
