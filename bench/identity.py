"""A bench-only network that costs nothing: the input back, unchanged. Registered as an
architecture in every Ray worker of a bench (ray.init's worker_process_setup_hook = `identity.install`)
and in the bench's own process, so a model file of it goes through exactly the job's actor path:
what the job then restores per second is the rate of everything that is not the network."""
from __future__ import annotations

import torch
from torch import nn

ARCH = "bench-identity"


class IdentityNet(nn.Module):
    arch = ARCH
    options = ()
    receptive_radius = 0
    stride = 1
    takes_quality = False

    def __init__(self, channels: int = 3):
        super().__init__()
        self.args = dict(channels=channels)
        self.anchor = nn.Parameter(torch.zeros(1))  # where the weights are = the device (carray.restore.network_device)

    def forward(self, x: torch.Tensor, quality=None) -> torch.Tensor:
        return x


def install() -> None:
    from carray import model

    model.ARCHITECTURES.setdefault(ARCH, IdentityNet)


def save_identity_model(path: str, channels: int = 3) -> str:
    from carray.model import save_model

    install()
    save_model(IdentityNet(channels), path, {"note": "bench-only identity network: costs nothing"})
    return path
