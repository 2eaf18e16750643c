"""Plug-ins that misbehave in ways no conformance verdict covers: they raise, hang, crash or exit.

Each is NumPy's multi-head attention, correct in float64; in float32 (where
`misbehave` is called, on the first example) it does its fault. The harness
must end that one cell as `error` with the right reason and run every other.
The fault can also be chosen by the environment variable FAULT for `Fault`
(the class an entry-point test registers).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

from impls.numpy.mha import Implementation


def misbehave(fault: str) -> None:
    if fault == "raise":
        raise RuntimeError("the plug-in raised on purpose")
    if fault == "hang":
        while True:
            time.sleep(0.05)
    if fault == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if fault == "abort":
        os.abort()
    if fault == "os_exit":
        os._exit(3)
    if fault == "sys_exit":
        sys.exit(0)
    if fault == "kill":  # what the kernel's OOM killer does
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "slow":  # each example takes a while; the whole cell takes long
        time.sleep(1.0)
        return
    if fault != "none":
        raise ValueError(f"unknown fault {fault!r}")


class Faulty(Implementation):
    """Misbehaves as `fault` says in float32, follows the spec in float64."""

    fault = "none"
    dtypes = ("float64", "float32")

    def build(self, config, *, dtype, device, **kwargs):
        built = super().build(config, dtype=dtype, device=device, **kwargs)
        fault = self.fault if dtype == "float32" else "none"
        call = built.__call__

        class Wrapped:
            def load(self, weights):
                built.load(weights)

            def __call__(self, inputs):
                misbehave(fault)
                return call(inputs)

        return Wrapped()


class Raises(Faulty):
    fault = "raise"


class Hangs(Faulty):
    fault = "hang"


class Segfaults(Faulty):
    fault = "segfault"


class Aborts(Faulty):
    fault = "abort"


class OsExit(Faulty):
    fault = "os_exit"


class SysExit(Faulty):
    fault = "sys_exit"


class Killed(Faulty):
    fault = "kill"


class Slow(Faulty):
    fault = "slow"


class Fault(Faulty):
    """The fault named by $FAULT, for an entry point (whose target takes no arguments)."""

    name = "faulty-attention"

    @property
    def fault(self):
        return os.environ.get("FAULT", "none")
