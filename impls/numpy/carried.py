"""Values that carry their error bound: the arithmetic the reference's backward passes are written in.

A `Carried` is an array and, optionally, its bound: how far a correct
implementation's value may be from the reference's, per element, in units of
the dtype's eps, to first order (spec/README.md, "Gradients", states the
rules; the forward passes follow the same rules written out by hand, see
impls/numpy/bounds.py). Writing a backward pass once in this arithmetic gives
both the reference's gradients and their bounds; with no bounds asked for,
every bound is None and the arithmetic is NumPy's.

The rules, for exact inputs and weights (bound 0):

- a product of matrices, `a @ b` over n terms: the inputs' errors carried by
  the other factor's size, `sqrt(e(a)**2 @ b**2 + a**2 @ e(b)**2)`, and the
  rounding of the sum, `r(n) * (|a| @ |b|)` with `r(n) = sqrt(n - 1) + 1`;
- a sum of n terms along an axis: `sqrt(sum e**2) + r(n) * sum |terms|`;
- an elementwise product: `sqrt((e(a) |b|)**2 + (|a| e(b))**2) + |a b|`;
- a sum or difference of two: `sqrt(e(a)**2 + e(b)**2) + |a +- b|`;
- a product by an exact constant c: `|c| e(a) + |c a|`;
- a function of a value (`Carried.apply`): the value's error carried by the
  function's slope there, and the roundings the function adds, both given
  by the caller.

Inherited errors of independent terms add in quadrature, and each rounding
adds one eps of the result (or of the terms' sizes for a sum). Where both
factors of a product carry errors, their product is counted too (in eps,
`eps * e(a) e(b)`, elementwise or as a matrix product): first order misses it
where both values are exactly 0 in the reference, as a layer norm of one
feature makes them. A value made from exact inputs given the dtype's eps
(`Carried.exact(value, eps)`) passes it on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from impls.numpy.bounds import rounding


class Carried:
    """A value and its bound in eps (None: bounds are not being computed)."""

    __slots__ = ("value", "bound", "eps")
    __array_ufunc__ = None  # `array * carried` is Carried.__rmul__, not NumPy's elementwise loop

    def __init__(self, value: np.ndarray, bound: np.ndarray | None, eps: float | None = None):
        self.value = np.asarray(value)
        self.bound = None if bound is None else np.broadcast_to(np.asarray(bound, dtype=np.float64),
                                                                 self.value.shape)
        self.eps = eps  # the dtype's, for the products of two errors; None counts none

    @classmethod
    def exact(cls, value: np.ndarray, bounds: bool | float | None) -> "Carried":
        """An input, weight or cotangent: exact in the reference's arithmetic. `bounds`: the dtype's eps (or
        True) to carry bounds, None or False for none."""
        value = np.asarray(value)
        eps = None if isinstance(bounds, bool) or bounds is None else float(bounds)
        return cls(value, np.zeros(value.shape) if bounds else None, eps)

    @property
    def bounds(self) -> bool:
        return self.bound is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def _like(self, value: np.ndarray, bound: np.ndarray | None, other: "Carried | None" = None) -> "Carried":
        eps = self.eps if other is None or other.eps is None else other.eps
        return Carried(value, bound if self.bounds else None, eps)

    # --- shape: bounds follow the elements -----------------------------------------------------------------
    def reshape(self, *shape) -> "Carried":
        return self._like(self.value.reshape(*shape), None if not self.bounds else self.bound.reshape(*shape))

    def transpose(self, *axes) -> "Carried":
        return self._like(self.value.transpose(*axes), None if not self.bounds else self.bound.transpose(*axes))

    @property
    def mT(self) -> "Carried":
        """The last two axes swapped."""
        axes = list(range(self.value.ndim))
        axes[-2:] = axes[-1], axes[-2]
        return self.transpose(*axes)

    def where(self, condition: np.ndarray, other: float = 0.0) -> "Carried":
        """Elements where `condition` holds, `other` (exact) elsewhere."""
        value = np.where(condition, self.value, other)
        return self._like(value, None if not self.bounds else np.where(condition, self.bound, 0.0))

    # --- arithmetic -----------------------------------------------------------------------------------------
    def __matmul__(self, other: "Carried | np.ndarray") -> "Carried":
        other = _carried(other, self.bounds)
        value = self.value @ other.value
        if not self.bounds:
            return Carried(value, None)
        n = self.value.shape[-1]
        inherited = np.sqrt(self.bound**2 @ other.value**2 + self.value**2 @ other.bound**2)
        inherited = inherited + self._second(other, self.bound @ other.bound)
        return self._like(value, inherited + rounding(n) * (np.abs(self.value) @ np.abs(other.value)), other)

    def __rmatmul__(self, other: np.ndarray) -> "Carried":
        return _carried(other, self.bounds) @ self

    def __mul__(self, other: "Carried | np.ndarray | float") -> "Carried":
        if np.isscalar(other):
            return self.scaled(float(other))
        other = _carried(other, self.bounds)
        value = self.value * other.value
        if not self.bounds:
            return Carried(value, None)
        inherited = np.sqrt((self.bound * np.abs(other.value))**2 + (np.abs(self.value) * other.bound)**2)
        inherited = inherited + self._second(other, self.bound * other.bound)
        return self._like(value, inherited + np.abs(value), other)

    def _second(self, other: "Carried", product: np.ndarray) -> np.ndarray | float:
        """The product of the two factors' errors, in eps (`product` is that of their bounds)."""
        eps = self.eps if other.eps is None else other.eps
        return 0.0 if eps is None else eps * product

    __rmul__ = __mul__

    def __add__(self, other: "Carried | np.ndarray") -> "Carried":
        return self._sum2(_carried(other, self.bounds), 1.0)

    __radd__ = __add__

    def __sub__(self, other: "Carried | np.ndarray") -> "Carried":
        return self._sum2(_carried(other, self.bounds), -1.0)

    def __rsub__(self, other: np.ndarray) -> "Carried":
        return _carried(other, self.bounds) - self

    def __neg__(self) -> "Carried":
        return self._like(-self.value, self.bound)

    def _sum2(self, other: "Carried", sign: float) -> "Carried":
        value = self.value + sign * other.value
        if not self.bounds:
            return Carried(value, None)
        return self._like(value, np.sqrt(self.bound**2 + other.bound**2) + np.abs(value), other)

    def scaled(self, c: float) -> "Carried":
        """A product by an exact constant."""
        value = self.value * c
        return self._like(value, None if not self.bounds else abs(c) * self.bound + np.abs(value))

    def sum(self, axis, keepdims: bool = False) -> "Carried":
        """A sum along `axis` (an int or a tuple of them)."""
        value = self.value.sum(axis=axis, keepdims=keepdims)
        if not self.bounds:
            return Carried(value, None)
        axes = (axis,) if np.isscalar(axis) else tuple(axis)
        n = int(np.prod([self.value.shape[a] for a in axes]))
        inherited = np.sqrt((self.bound**2).sum(axis=axis, keepdims=keepdims))
        return self._like(value, inherited + rounding(n) * np.abs(self.value).sum(axis=axis, keepdims=keepdims))

    def apply(self, fn: Callable[[np.ndarray], np.ndarray], slope: np.ndarray | float,
              roundings: np.ndarray | float) -> "Carried":
        """fn(value), with the value's error carried by `slope` (an upper bound of |fn'| there, elementwise)
        and `roundings` added: eps the function's own arithmetic may cost, already in units of the result."""
        value = fn(self.value)
        if not self.bounds:
            return Carried(value, None)
        return self._like(value, np.abs(slope) * self.bound + roundings)


def _carried(x: "Carried | np.ndarray", bounds: bool) -> Carried:
    return x if isinstance(x, Carried) else Carried.exact(x, bool(bounds))
