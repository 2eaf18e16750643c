"""The harness's own words, defined once: the axes of the matrix, verdicts, slots and their labels.

Every other module of the harness takes these from here. The implementations
(impls/) never import the harness: they name dtypes, devices and modes with
the same strings, and the harness checks what they declare against the axes
below.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping, NamedTuple

import numpy as np

#: The dtype axis of the matrix, widest first.
DTYPES = ("float64", "float32", "float16", "bfloat16")
#: The dtypes an implementation runs in when it does not say.
DEFAULT_DTYPES = ("float32", "float64")
#: The device axis: "cuda" is an NVIDIA (or ROCm) GPU, whatever the framework calls it.
DEVICES = ("cpu", "cuda")
#: The execution-mode axis: op by op, or through the framework's compiler.
MODES = ("eager", "compiled")
#: The backends Keras 3 runs on; a worker process runs one (KERAS_BACKEND).
KERAS_BACKENDS = ("tensorflow", "torch", "jax")


#: Where a registered implementation comes from (`Registered.source`): shipped with this project (ours and
#: the adapters of the frameworks' own layers), installed under the entry-point group, or named on the
#: command line as a plug-in ("module:attr" or "file.py:attr"; results then name it by that target).
SHIPPED, ENTRY_POINT, PLUGIN = "shipped", "entry point", "plugin"


class UsageError(Exception):
    """Bad input from the user (a name, a target, a file, a flag); the message names it and the valid choices."""


class Verdict(str, Enum):
    """What a cell came to; serialised as its value, the strings results files have always held."""

    CONFORMANT = "conformant"
    KNOWN_DEVIATION = "known-deviation"  # conformant except on examples a ledger entry covers, as recorded there
    NON_CONFORMANT = "non-conformant"
    UNSUPPORTED = "unsupported"        # the implementation cannot run this cell (dtype, mode, every config)
    NOT_AVAILABLE = "not-available"    # this machine cannot (a framework or a device is missing)
    ERROR = "error"                    # no answer could be had: a crash, a time limit, a harness failure

    __str__ = str.__str__  # "conformant", not "Verdict.CONFORMANT", in messages and f-strings

    @property
    def ran(self) -> bool:
        """Whether the cell's examples ran (the other two say why they did not)."""
        return self not in (Verdict.UNSUPPORTED, Verdict.NOT_AVAILABLE)

    @property
    def failed(self) -> bool:
        """Whether the cell fails a run (exit status 1)."""
        return self in (Verdict.NON_CONFORMANT, Verdict.ERROR)


class Property(str, Enum):
    """A rule that holds for any correct implementation and needs no reference to check (spec/README.md,
    "Properties"): a spec's `property` table says which of these its component has, and
    conformance/properties.py has one check for each."""

    BATCH_INDEPENDENCE = "batch_independence"  # batch element b's outputs depend on its own inputs only
    MASKED_KEY_INVARIANCE = "masked_key_invariance"  # what a mask hides changes nothing it hides it from
    PADDING_INVARIANCE = "padding_invariance"  # what stands at padded positions changes no real position's output
    CAUSALITY = "causality"  # the outputs up to step t depend on the inputs up to t only
    KEY_PERMUTATION_EQUIVARIANCE = "key_permutation_equivariance"  # the keys' order only reorders the weights
    STATELESSNESS = "statelessness"  # a call depends on its weights and inputs only, and changes neither
    DETERMINISM = "determinism"  # the same call twice gives the same bits

    __str__ = str.__str__


class Held(str, Enum):
    """What a property came to in one cell."""

    HELD = "held"  # on every example it was checked on
    FAILED = "failed"  # on one example at least: the cell is non-conformant, with that example
    NON_DETERMINISTIC = "non-deterministic"  # determinism off the CPU: repeated calls differ within the budget
    NOT_CHECKED = "not-checked"  # no example of the cell reached it (the reason says why)

    __str__ = str.__str__


#: Which cell of a slot speaks for it when several environments ran it: failures first, then a
#: known deviation, then a pass; a cell that could not run only when no environment ran the slot
#: (unsupported says more than not-available).
SEVERITY = (Verdict.ERROR, Verdict.NON_CONFORMANT, Verdict.KNOWN_DEVIATION, Verdict.CONFORMANT,
            Verdict.UNSUPPORTED, Verdict.NOT_AVAILABLE)


def impl_label(implementation: str, backend: str | None) -> str:
    """How an implementation is shown with its backend, e.g. `keras[jax]`; just its name without one."""
    return f"{implementation}[{backend}]" if backend else implementation


class Slot(NamedTuple):
    """One place in the matrix; cells of the same slot from different files are the same check."""

    component: str
    implementation: str
    backend: str | None
    device: str
    mode: str
    dtype: str

    @classmethod
    def of(cls, cell: Mapping[str, Any]) -> "Slot":
        """The slot of a cell as a results file holds it."""
        return cls(cell["component"], cell["implementation"], cell["backend"], cell["device"], cell["mode"],
                   cell["dtype"])

    @property
    def impl(self) -> str:
        return impl_label(self.implementation, self.backend)

    @property
    def label(self) -> str:
        """One line of text, e.g. `mha keras[jax] cpu compiled float16`."""
        return f"{self.component} {self.impl} {self.device} {self.mode} {self.dtype}"


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a dtype name; NumPy has no bfloat16 of its own, so it comes from ml_dtypes."""
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
