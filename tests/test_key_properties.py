"""Property tests of the cache key: values a function can tell apart never share a key.

``observe(v)`` is what a function can see of an argument: type, dtype (with its
metadata), shape, memory order, exact bytes (NaN payloads, -0.0), masks, nesting.
Three deliberate exceptions, documented: the insertion order of a dict and whether two
equal mutable members are one object or two (both as in joblib), and the padding bytes
of records, which hold whatever memory held (numpy's own ``copy`` does not keep them).

For generated pairs, different observations must give different digests, and equal
values built separately must give equal ones; a cached ``observe`` must return the
observation of the argument it was called with, never another's.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import arraycache
from arraycache import hash as ac_hash

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix


def observe(value):
    """Everything a function can tell about ``value`` (see the module docstring)."""
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, np.ndarray):
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        data = np.asarray(value).view(np.ndarray)
        if data.dtype.fields is not None:
            data = _zero_padded(data)
        raw = np.ascontiguousarray(data).view(np.uint8).tobytes() if data.size else b""
        extra = None
        if isinstance(value, np.ma.MaskedArray):
            extra = (np.ma.getmaskarray(value).tobytes(), observe(value.fill_value))
        return (name, value.dtype.descr, _metadata(value.dtype), value.shape, order, raw, extra)
    if isinstance(value, np.generic):
        data = np.asarray(value)
        data = _zero_padded(data) if data.dtype.fields is not None else data
        return (name, value.dtype.str, _metadata(value.dtype), data.tobytes())
    if kind is float:
        return (name, struct.pack("<d", value))
    if kind is complex:
        return (name, struct.pack("<dd", value.real, value.imag))
    if kind in (list, tuple):
        return (name, tuple(observe(v) for v in value))
    if kind in (set, frozenset):
        return (name, tuple(sorted(repr(observe(v)) for v in value)))
    if kind is OrderedDict:
        return (name, tuple((observe(k), observe(v)) for k, v in value.items()))
    if kind is dict:
        return (name, tuple(sorted((repr(observe(k)), observe(v)) for k, v in value.items())))
    return (name, value)


def _zero_padded(records: np.ndarray) -> np.ndarray:
    out = np.zeros(records.shape, records.dtype)  # calloc: padding is zero
    for name in records.dtype.names:
        field = records[name]
        if field.dtype.fields is not None:
            out[name] = _zero_padded(field)
        else:
            out[name] = field
    return out


def _metadata(dtype: np.dtype):
    if dtype.fields:
        return tuple((n, _metadata(f[0])) for n, f in dtype.fields.items())
    return repr(dtype.metadata) if dtype.metadata is not None else None


# --- values ----------------------------------------------------------------------------------

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0]),
    st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), floats,
    st.complex_numbers(allow_nan=True), st.text(max_size=4), st.binary(max_size=4),
)
enum = np.dtype("i1", metadata={"enum": {"A": 0, "B": 1}})
dtypes = st.one_of(
    hnp.scalar_dtypes(),
    hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3),
    st.sampled_from([
        enum, np.dtype("i1"), np.dtype([("a", "u1"), ("b", "<f8")], align=True),
        np.dtype([("a", "u1"), ("b", "<f8")]), np.dtype([("a", enum), ("b", ">i4")]),
    ]),
)


@st.composite
def arrays(draw):
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["C", "F", "strided", "matrix", "masked"]))
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = np.repeat(arr, 2, axis=0)[::2]
    elif layout == "matrix" and arr.ndim == 2 and dtype.kind in "biufc":
        arr = np.asmatrix(arr)
    elif layout == "masked":
        mask = draw(hnp.arrays(np.bool_, arr.shape))
        arr = np.ma.masked_array(arr, mask=mask)
    return arr


numpy_scalars = st.one_of(
    hnp.from_dtype(np.dtype("f8")).map(np.float64),
    hnp.from_dtype(np.dtype("f4")).map(np.float32),
    st.integers(-100, 100).flatmap(lambda i: st.sampled_from(
        [np.int8(i), np.int16(i), np.int64(i), np.longlong(i), np.intc(i)])),
)

leaves = st.one_of(scalars, arrays(), numpy_scalars)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(), st.booleans()),
                        children, max_size=3),
        st.lists(st.tuples(st.text(max_size=2), children), max_size=3).map(OrderedDict),
        st.frozensets(scalars, max_size=3),
    ),
    max_leaves=6,
)


def rebuilt(value):
    """An equal value made of new objects (what a later call passes)."""
    if isinstance(value, np.ndarray):
        copy = value.copy(order="K")
        return copy if copy.strides == value.strides else value.copy(order="A")
    if type(value) in (list, tuple):
        return type(value)(rebuilt(v) for v in value)
    if type(value) is dict:
        return {k: rebuilt(v) for k, v in reversed(list(value.items()))}
    if type(value) is OrderedDict:
        return OrderedDict((k, rebuilt(v)) for k, v in value.items())
    return value


# --- properties ------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(values, values)
def test_values_a_function_tells_apart_have_different_digests(first, second) -> None:
    if observe(first) != observe(second):
        assert ac_hash(first) != ac_hash(second)


@PROPERTY
@given(values)
def test_equal_values_built_again_have_the_same_digest(value) -> None:
    copy = rebuilt(value)
    assert observe(copy) == observe(value)
    assert ac_hash(copy) == ac_hash(value)


@PROPERTY
@given(arrays(), st.data())
def test_a_changed_array_element_changes_the_digest(arr, data) -> None:
    base = np.asarray(arr).view(np.ndarray)
    if base.size == 0 or base.dtype.itemsize == 0:
        return
    changed = np.array(base, copy=True, order="K")
    raw = changed.reshape(-1, order="A").view(np.uint8) if changed.flags.forc else None
    if raw is None:
        return
    index = data.draw(st.integers(0, raw.size - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    if observe(changed) != observe(base):
        assert ac_hash(changed) != ac_hash(base)


@pytest.fixture(scope="module")
def cached_observe(tmp_path_factory):
    memory = arraycache.Memory(tmp_path_factory.mktemp("keys") / "cache", verbose=0)
    return memory.cache(observe)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(values, values)
def test_cached_function_returns_the_observation_of_its_own_argument(
    cached_observe, first, second
) -> None:
    for value in (first, second, rebuilt(first)):
        assert cached_observe(value) == observe(value)


# --- argument binding: the fast path agrees with inspect.Signature.bind -----------------------

_PARAMS = ("a", "b", "c", "d")


@settings(max_examples=300, deadline=None)
@given(
    n_params=st.integers(0, 4),
    n_defaults=st.integers(0, 4),
    n_args=st.integers(0, 5),
    keywords=st.lists(st.sampled_from((*_PARAMS, "e")), unique=True, max_size=5),
)
def test_binding_matches_signature_bind(n_params, n_defaults, n_args, keywords) -> None:
    """Any call of a function of plain parameters binds to the arguments (names, values,
    order) that ``Signature.bind`` + ``apply_defaults`` give, or fails as they do."""
    import inspect

    from arraycache.exceptions import WrongArgumentsError
    from arraycache.funcinfo import FunctionInfo

    names = _PARAMS[:n_params]
    n_defaults = min(n_defaults, n_params)
    params = [f"{n}={-i}" if i >= n_params - n_defaults else n for i, n in enumerate(names)]
    namespace: dict = {}
    exec(f"def f({', '.join(params)}):\n    return 0", namespace)
    func = namespace["f"]
    args = tuple(range(100, 100 + n_args))
    kwargs = {k: f"kw-{k}" for k in keywords}
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except TypeError:
        with pytest.raises(WrongArgumentsError):
            FunctionInfo(func).bind(args, kwargs)
        return
    bound.apply_defaults()
    arguments = FunctionInfo(func).bind(args, kwargs)
    assert list(arguments.items()) == list(bound.arguments.items())
