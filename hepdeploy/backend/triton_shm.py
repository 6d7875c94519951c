"""Triton system shared memory for a client on the server's host.

A server on the same machine can read request tensors from, and write answers into, POSIX shared
memory instead of receiving them through the gRPC/HTTP socket (CMSSW's SonicTriton does this by
default for a local server: ``useSharedMemory``). :class:`SharedMemoryRegions` holds one client's
regions: created with tritonclient's shared-memory utilities, registered with the server, reused
across requests (a region grows when a request needs more), unregistered and destroyed on
:meth:`~SharedMemoryRegions.close` (a ``with`` block's end, an error, Ctrl-C).

A client killed outright cannot clean up: its ``/dev/shm`` segments are unlinked by Python's
resource tracker when the client's process dies, and the server keeps a registration whose
process is gone. Region names carry the client's pid, so the next client on the host
unregisters those registrations first (:meth:`SharedMemoryRegions.sweep_stale`).

``--shared-memory auto`` (the default) uses it for a loopback address only; ``on`` refuses a
remote one; a remote address never tries it.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hepdeploy.errors import BadInputError, ServerError
from hepdeploy.lifetime import process_alive

log = logging.getLogger(__name__)

SharedMemoryMode = Literal["auto", "on", "off"]
SHARED_MEMORY_MODES: tuple[str, ...] = ("auto", "on", "off")
REGION_PREFIX = "hepdeploy_shm_"
_REGION_NAME = re.compile(rf"^{REGION_PREFIX}(\d+)_")
ALIGNMENT = 64  # every tensor starts on a cache line


def is_loopback(url: str) -> bool:
    """Whether ``HOST:PORT`` names this machine through a loopback address."""
    host = url.rpartition(":")[0].strip("[]") if ":" in url else url
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shared_memory_wanted(mode: SharedMemoryMode | str, url: str) -> bool:
    """Whether a client of ``url`` uses system shared memory under ``mode``; ``on`` with a remote server is bad input."""
    if mode not in SHARED_MEMORY_MODES:
        raise BadInputError(f"shared memory {mode!r}: use one of {', '.join(SHARED_MEMORY_MODES)}")
    if mode == "off":
        return False
    local = is_loopback(url)
    if mode == "on" and not local:
        raise BadInputError(f"--shared-memory on: {url} is not a loopback address; system shared memory only "
                            "reaches a server on this host (use auto or off)")
    return local


def aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def layout(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of tensors of ``sizes`` bytes packed into one region, and the region's size."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += aligned(size)
    return offsets, max(total, ALIGNMENT)


@dataclass
class Region:
    """One registered region: its Triton name, its POSIX key, its size, tritonclient's handle."""

    name: str
    key: str
    byte_size: int
    handle: Any

    def write(self, arrays: list[np.ndarray], offsets: list[int]) -> None:
        import tritonclient.utils.shared_memory as shm

        for array, offset in zip(arrays, offsets):
            shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(array)], offset=offset)

    def read(self, dtype: str, shape: list[int], offset: int) -> np.ndarray:
        """A copy of one tensor (the region is overwritten by the next request)."""
        import tritonclient.utils.shared_memory as shm

        return np.array(shm.get_contents_as_numpy(self.handle, np.dtype(dtype), shape, offset=offset))


class SharedMemoryRegions:
    """A client's registered regions by role (e.g. ``input``, ``output``); see the module docstring.

    ``client`` is a synchronous tritonclient gRPC or HTTP client; ``timeout_s`` bounds each call to it.
    """

    def __init__(self, client: Any, timeout_s: float, grpc: bool) -> None:
        self._client = client
        self._grpc = grpc
        self._timeout = {"client_timeout": timeout_s} if grpc else {}
        self._token = f"{REGION_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        self.regions: dict[str, Region] = {}
        self.registrations = 0  # how often a region was registered (reuse keeps this at one per role)
        self.swept: list[str] = []
        self.sweep_stale()

    def __enter__(self) -> SharedMemoryRegions:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _registered_names(self) -> list[str]:
        options = {"as_json": True, **self._timeout} if self._grpc else {}
        status = self._client.get_system_shared_memory_status(**options)
        if isinstance(status, dict):  # gRPC: {"regions": {name: {...}}}
            return list(status.get("regions", {}))
        return [entry["name"] for entry in status]  # HTTP: a list of regions

    def sweep_stale(self) -> None:
        """Unregister the regions of hepdeploy clients on this host whose process is gone."""
        try:
            names = self._registered_names()
        except Exception as error:  # a server without the shared-memory extension: registering says so
            log.debug("cannot list the server's shared-memory regions: %s", error)
            return
        for name in names:
            match = _REGION_NAME.match(name)
            if match and not process_alive(int(match.group(1))):
                self._unregister(name)
                self.swept.append(name)
        if self.swept:
            log.info("unregistered %d shared-memory region(s) left by killed clients", len(self.swept))

    def region(self, role: str, byte_size: int) -> Region:
        """The ``role`` region, at least ``byte_size`` bytes: reused, or made (and registered) anew."""
        current = self.regions.get(role)
        if current is not None and current.byte_size >= byte_size:
            return current
        if current is not None:
            self._release(current)
        import tritonclient.utils.shared_memory as shm

        size = max(byte_size, 2 * current.byte_size if current else 0)  # grow geometrically
        name = f"{self._token}_{role}"
        key = f"/{name}"
        try:
            handle = shm.create_shared_memory_region(name, key, size, create_only=True)
        except shm.SharedMemoryException as error:
            raise ServerError(f"cannot create a {size}-byte shared-memory region: {error.__cause__ or error}") from error
        region = Region(name, key, size, handle)
        try:
            self._client.register_system_shared_memory(name, key, size, **self._timeout)
        except Exception as error:  # tritonclient's InferenceServerException, transport errors
            shm.destroy_shared_memory_region(handle)
            raise ServerError(f"the server refused shared memory region {name} ({error}); "
                              "use --shared-memory off") from error
        self.registrations += 1
        self.regions[role] = region
        return region

    def _unregister(self, name: str) -> None:
        try:
            self._client.unregister_system_shared_memory(name, **self._timeout)
        except Exception as error:  # a dead server has nothing left to unregister
            log.debug("unregistering %s failed: %s", name, error)

    def _release(self, region: Region) -> None:
        import tritonclient.utils.shared_memory as shm

        self._unregister(region.name)
        shm.destroy_shared_memory_region(region.handle)

    def close(self) -> None:
        """Unregister and destroy every region (idempotent)."""
        regions, self.regions = self.regions, {}
        for region in regions.values():
            self._release(region)



def leaked_segments() -> list[str]:
    """hepdeploy's segments in ``/dev/shm`` (Linux): what a run must leave behind is none."""
    try:
        return sorted(name for name in os.listdir("/dev/shm") if name.startswith(REGION_PREFIX))
    except FileNotFoundError:
        return []
