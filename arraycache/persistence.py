"""Dump and load one result: zarr v3 arrays for its ndarrays plus a small skeleton.

An entry folder is a zarr group.  Each ndarray of the result becomes a zarr array
``a0``, ``a1``...  The rest of the result (the *skeleton*) is stored as:

- ``"array"``: the result is one array, nothing else to store;
- ``"json"``: plain containers, numbers, strings, numpy scalars and pandas frames,
  written as tagged JSON into the group attributes (see plainjson.py; a frame's
  columns are arrays of the entry, see frames.py), so loading it never unpickles;
- ``"pickle"``: anything else, pickled with each array replaced by a persistent
  reference, and the pickle bytes kept as the uint8 zarr array ``skeleton`` (so
  the entry holds nothing but zarr nodes and ``zarr.open_group`` lists it cleanly);
  a frame inside it is a persistent reference too, stored as in a JSON skeleton.

Uncompressed arrays are one zarr shard covering the whole array, written by us in
the array's memory order (a transpose codec records F order), with inner chunks
that are slabs of the leading memory axis: the shard file starts with exactly the
array's bytes, so it maps as an ``np.memmap`` at offset 0, and zarr or dask can
still read one slab without reading the rest.
Compressed arrays are chunked along their leading memory axis and encoded in
threads.  Reads go straight to the chunk files: zarr is the format and the interop,
not the hot path (``zarr.open_array`` alone costs ~0.4 ms).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import Compression
from .hashing import (
    BLOCK_SIZE,
    array_digest,
    block_digest,
    block_digests,
    combine_digests,
    has_padding,
    remember_digest,
)
from .plainjson import (
    NotPlain,
    TreeWriter,
    decode_tree,
    dtype_code,
    dtype_from_json,
    dtype_metadata_to_json,
    dtype_to_json,
    dtype_with_metadata,
    frame_types,
    storable,
)

__all__ = ["EntryDamaged", "UntrustedEntry", "dump", "load", "verify"]

#: Arrays smaller than this, inside a pickled skeleton, stay in the pickle: a fitted
#: estimator holds dozens of tiny arrays that are not worth a file each.
PICKLE_INLINE_NBYTES = 1024

_COMPRESSED_CHUNK_BYTES = 4 << 20
_WRITE_PIECE_BYTES = 16 << 20
_SKELETON = "skeleton"


class EntryDamaged(Exception):
    """An entry's files do not match its metadata (missing, truncated, altered)."""


class UntrustedEntry(EntryDamaged):
    """An entry would need unpickling a file owned by another user."""


# --- one array -------------------------------------------------------------------------------


def _storage_view(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """The array as a C-ordered view (or copy source) in its storage order, and that order.

    F-contiguous arrays are stored as their transpose, so their bytes are written as
    they are in memory; everything else is stored in C order.
    """
    if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous:
        return arr.T, "F"
    return arr, "C"


def _contiguous_copy(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``arr`` with every byte of each item.

    numpy copies records field by field and leaves the padding between fields as
    whatever the new buffer held: then the bytes of one copy do not match the digests
    of another.  Whole items viewed as void are copied byte for byte.
    """
    if arr.dtype.fields is None or arr.dtype.itemsize == 0:
        return np.ascontiguousarray(arr)
    whole_items = arr.view(np.dtype((np.void, arr.dtype.itemsize)))
    return np.ascontiguousarray(whole_items).view(arr.dtype)


def _with_defined_padding(arr: np.ndarray) -> np.ndarray:
    """``arr``, or if it is a non-contiguous record array, a contiguous copy of it whose
    padding bytes are the original's (see :func:`_contiguous_copy`)."""
    if arr.dtype.fields is None or arr.nbytes == 0:
        return arr
    if arr.flags.c_contiguous or arr.flags.f_contiguous:
        return arr
    return _contiguous_copy(arr)


def _chunk_path(array_dir: Path, chunk_index: tuple[int, ...]) -> Path:
    if not chunk_index:
        return array_dir / "c"
    return array_dir.joinpath("c", *map(str, chunk_index))


def _create_zarr_metadata(
    entry_dir: Path, name: str, arr: np.ndarray, order: str, chunks: tuple[int, ...],
    compression: Compression | None, shards: tuple[int, ...] | None = None,
) -> None:
    """Write the array's ``zarr.json`` through zarr itself, so it is valid zarr v3."""
    # zarr takes ~0.1 s to import: only writers pay it, not hits nor parallel workers.
    import zarr
    from zarr.codecs import BytesCodec, TransposeCodec
    from zarr.storage import LocalStore

    filters = [TransposeCodec(order=tuple(reversed(range(arr.ndim))))] if order == "F" else None
    endian = "big" if arr.dtype.byteorder == ">" else "little"
    compressors = [compression.zarr_codec(arr.dtype.itemsize)] if compression else None
    kwargs: dict[str, Any] = dict(
        shape=arr.shape, chunks=tuple(max(1, c) for c in chunks), filters=filters,
        shards=shards, compressors=compressors, fill_value=None,
        config={"write_empty_chunks": True}, overwrite=True,
    )
    with warnings.catch_warnings():
        # zarr flags fixed-length strings and structured dtypes as "unstable" in v3.
        warnings.simplefilter("ignore")
        try:
            zarr.create_array(
                LocalStore(entry_dir), name=name, dtype=arr.dtype,
                serializer=BytesCodec(endian=endian), **kwargs,
            )
        except Exception:
            # A dtype zarr cannot describe (e.g. nested structured fields): store the
            # items as raw bytes of the same size; our own metadata keeps the dtype.
            if arr.dtype.itemsize == 0:
                # zarr has no zero-size items: no bytes either, as a trailing axis of 0.
                kwargs.update(shape=(*arr.shape, 0), chunks=(*kwargs["chunks"], 1),
                              filters=None, compressors=None)
                zarr.create_array(LocalStore(entry_dir), name=name, dtype=np.uint8, **kwargs)
                return
            zarr.create_array(
                LocalStore(entry_dir), name=name, dtype=np.dtype(f"V{arr.dtype.itemsize}"),
                **kwargs,
            )


def _write_file(path: Path, pieces: Any) -> None:
    # No fsync: it would double the time of a store (0.29 s per GiB on the test VM's
    # disk), and what it protects against, a power loss before the kernel wrote the
    # data, is caught on load instead: a short file fails the size check and
    # altered bytes fail the digests (see read_array).
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for piece in pieces:
            f.write(piece)


def _bytes_of(arr: np.ndarray) -> memoryview:
    """A byte view of a contiguous array (memoryview refuses datetime64 buffers)."""
    return memoryview(arr.reshape(-1, order="A").view(np.uint8))


def _raw_pieces(view: np.ndarray) -> Any:
    """The bytes of a C-order view, in pieces, copying at most one piece at a time."""
    if view.flags.c_contiguous:
        flat = _bytes_of(view)
        for start in range(0, len(flat), _WRITE_PIECE_BYTES):
            yield flat[start : start + _WRITE_PIECE_BYTES]
        return
    if view.ndim == 0:
        yield view.tobytes()
        return
    rows = max(1, _WRITE_PIECE_BYTES // max(1, _row_nbytes(view)))
    for start in range(0, view.shape[0], rows):
        yield np.ascontiguousarray(view[start : start + rows]).tobytes()


_codec_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _codec_pool
    if _codec_pool is None:
        _codec_pool = ThreadPoolExecutor(
            max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="arraycache-codec"
        )
    return _codec_pool


def _forget_pool_in_child() -> None:
    global _codec_pool
    _codec_pool = None


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _row_nbytes(view: np.ndarray) -> int:
    """Bytes of one leading-axis row (``view[0].nbytes`` is wrong for 'S' items: numpy
    strips their trailing NULs when it returns a scalar)."""
    return view.itemsize * math.prod(view.shape[1:])


def _slab_rows(view: np.ndarray) -> int:
    return max(1, _COMPRESSED_CHUNK_BYTES // max(1, _row_nbytes(view)))


def _write_raw(entry_dir: Path, name: str, arr: np.ndarray, view: np.ndarray, order: str) -> int:
    """Write ``arr`` uncompressed as one zarr shard; return the size of its file.

    The shard's inner chunks are slabs of the leading memory axis, so the file starts
    with the array's exact bytes in memory order (an ``np.memmap`` maps it at offset
    0), followed by the padding of the last slab and the shard index with its crc32c;
    zarr and dask can still read any slab without reading the rest.
    """
    path = _chunk_path(entry_dir / name, (0,) * arr.ndim)
    # No shard for 0-d and empty arrays (one plain chunk, or none), nor for records:
    # zarr 3.1 cannot read a sharded array whose fill value is a numpy void scalar.
    if arr.ndim == 0 or arr.size == 0 or arr.dtype.kind == "V":
        _create_zarr_metadata(entry_dir, name, arr, order, arr.shape, None)
        if arr.nbytes:
            _write_file(path, _raw_pieces(view))
        return arr.nbytes
    import google_crc32c  # a zarr dependency: zarr checks shard indexes with it

    rows = min(_slab_rows(view), view.shape[0])
    n_inner = -(-view.shape[0] // rows)
    inner, shard = (rows, *view.shape[1:]), (rows * n_inner, *view.shape[1:])
    if order == "F":
        inner, shard = inner[::-1], shard[::-1]
    _create_zarr_metadata(entry_dir, name, arr, order, inner, None, shards=shard)
    slab_nbytes = rows * _row_nbytes(view)
    index = np.empty((n_inner, 2), dtype="<u8")
    index[:, 0] = np.arange(n_inner, dtype="<u8") * slab_nbytes  # offsets
    index[:, 1] = slab_nbytes  # lengths
    padding = bytes(n_inner * slab_nbytes - arr.nbytes)
    crc = np.uint32(google_crc32c.value(index.tobytes())).astype("<u4").tobytes()
    _write_file(path, itertools.chain(_raw_pieces(view), [padding, index.tobytes(), crc]))
    return n_inner * slab_nbytes + index.nbytes + len(crc)


def write_array(
    entry_dir: Path, name: str, arr: np.ndarray, compression: Compression | None
) -> dict[str, Any]:
    """Store ``arr`` as zarr array ``name`` of the entry; return its metadata.

    ``arr`` must pass :func:`plainjson.storable` (its dtype, with any metadata and
    exact scalar type, goes into the JSON metadata).
    """
    metadata = dtype_metadata_to_json(arr.dtype)
    arr = _with_defined_padding(arr)
    view, order = _storage_view(arr)
    blocks = block_digests(arr)
    spec: dict[str, Any] = {
        "dtype": dtype_to_json(arr.dtype), "shape": list(arr.shape), "order": order,
        # One hex string, not a list of 25,600 for 100 GiB: parsed on every hit, it costs
        # 0.9 ms there instead of 1.2 ms (0.1 ms at 10 GiB).
        # The content digest (what a hit passed on hashes as) ignores record padding,
        # the block digests (what the files are checked against) do not.
        "digest": array_digest(arr) if has_padding(arr.dtype) else combine_digests(arr, blocks),
        "blocks": b"".join(blocks).hex(),
        "nbytes": arr.nbytes, "codec": None,
    }
    code = dtype_code(arr.dtype)
    if code != arr.dtype.str:
        spec["dtype_code"] = code
    if metadata is not None:
        spec["dtype_metadata"] = metadata
    array_dir = entry_dir / name
    if compression is None or arr.ndim == 0 or arr.nbytes == 0:
        spec["file_nbytes"] = _write_raw(entry_dir, name, arr, view, order)
        return spec

    rows = _slab_rows(view)
    storage_chunks = (rows, *view.shape[1:])
    chunks = tuple(reversed(storage_chunks)) if order == "F" else storage_chunks
    _create_zarr_metadata(entry_dir, name, arr, order, chunks, compression)
    codec = compression.numcodecs_codec(arr.dtype.itemsize)
    chunk_nbytes = rows * _row_nbytes(view)

    def encode_and_write(k: int) -> int:
        # Bytes, not items: a record copy (or assignment) skips padding bytes between
        # fields, which the digests cover; and datetime records export no buffer.
        data = np.ascontiguousarray(view[k * rows : (k + 1) * rows]).reshape(-1).view(np.uint8)
        if data.size < chunk_nbytes:  # zarr's edge chunks are full size, padded
            padded = np.zeros(chunk_nbytes, dtype=np.uint8)
            padded[: data.size] = data
            data = padded
        index = (k,) + (0,) * (arr.ndim - 1)
        encoded = codec.encode(data)
        _write_file(_chunk_path(array_dir, index[::-1] if order == "F" else index), [encoded])
        return len(encoded)

    n_chunks = -(-view.shape[0] // rows) if arr.size else 0
    spec["stored_nbytes"] = sum(_pool().map(encode_and_write, range(n_chunks)))
    spec["codec"] = {"name": compression.name, "level": compression.level, "rows": rows}
    return spec


def _read_compressed(array_dir: Path, spec: dict, dtype: np.dtype, shape: tuple) -> np.ndarray:
    order = spec["order"]
    out = np.empty(shape, dtype=dtype, order=order)
    view = out.T if order == "F" else out
    rows = spec["codec"]["rows"]
    codec = Compression(spec["codec"]["name"], spec["codec"]["level"]).numcodecs_codec(
        dtype.itemsize
    )

    def read_and_decode(k: int) -> None:
        index = (k,) + (0,) * (len(shape) - 1)
        path = _chunk_path(array_dir, index[::-1] if order == "F" else index)
        decoded = np.frombuffer(codec.decode(path.read_bytes()), dtype=np.uint8)
        # Copied as bytes (see write_array): a C-ordered slab of `view` is contiguous.
        target = view[k * rows : (k + 1) * rows].reshape(-1).view(np.uint8)
        if decoded.size < target.size:
            raise EntryDamaged(f"chunk {k} of {array_dir.name!r} decodes to too few bytes")
        target[...] = decoded[: target.size]

    n_chunks = -(-view.shape[0] // rows) if out.size else 0
    list(_pool().map(read_and_decode, range(n_chunks)))
    return out


def _check_digests(arr: np.ndarray, spec: dict, name: str) -> None:
    if b"".join(block_digests(arr)).hex() != spec["blocks"]:
        raise EntryDamaged(f"array {name!r} does not match its stored digests")


def read_array(
    entry_dir: Path, name: str, spec: dict[str, Any], mmap_mode: str | None
) -> np.ndarray:
    """Load array ``name`` of an entry: mapped with ``mmap_mode``, else read and verified.

    Raises
    ------
    EntryDamaged
        If a file is missing, has the wrong size, or (when read) the wrong content.
    """
    dtype = dtype_from_json(spec["dtype"])
    code = spec.get("dtype_code")
    if code is not None:
        dtype = np.dtype(code)
    metadata = spec.get("dtype_metadata")
    if metadata is not None:
        dtype = dtype_with_metadata(dtype, metadata)
    shape = tuple(spec["shape"])
    order = spec["order"]
    if spec["codec"] is not None:
        try:
            arr = _read_compressed(Path(entry_dir) / name, spec, dtype, shape)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EntryDamaged(f"array {name!r} cannot be decoded: {exc}") from exc
        _check_digests(arr, spec, name)
        return arr
    if spec["nbytes"] == 0:
        return np.empty(shape, dtype=dtype, order=order)
    # The one chunk's file, joined as a string (pathlib costs microseconds on every hit).
    path = os.path.join(entry_dir, name, "c", *("0" * len(shape)))
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise EntryDamaged(f"array {name!r} has no data file: {exc}") from exc
    expected = spec.get("file_nbytes", spec["nbytes"])
    if size != expected:
        raise EntryDamaged(f"array {name!r} has a file of {size} bytes, expected {expected}")
    if mmap_mode is not None:
        # 'w+' would create the file anew, zeroing the cached data: map it 'r+' (as joblib).
        mode = "r+" if mmap_mode == "w+" else mmap_mode
        arr = np.memmap(path, dtype=dtype, mode=mode, shape=shape, order=order)
        if mmap_mode == "r":
            remember_digest(arr, spec["digest"])
        return arr
    arr = np.empty(shape, dtype=dtype, order=order)
    _read_and_check(path, arr, spec, name)
    return arr


def _read_and_check(path: str, arr: np.ndarray, spec: dict[str, Any], name: str) -> None:
    """Read a raw chunk file into ``arr`` one block at a time, checking each block's
    digest while it is still in the CPU cache: verification then costs next to nothing
    (measured: 1 GiB read 0.111 s unchecked, 0.116 s checked; hashing after the read
    took 0.16 s, also with the hashing overlapped in threads)."""
    data = np.frombuffer(_bytes_of(arr), dtype=np.uint8)
    try:
        expected = bytes.fromhex(spec["blocks"])
    except (TypeError, ValueError):
        raise EntryDamaged(f"array {name!r} has unreadable block digests") from None
    width = len(block_digest(b""))
    if len(expected) != width * -(-data.size // BLOCK_SIZE):
        raise EntryDamaged(f"array {name!r} has the wrong number of block digests")
    with open(path, "rb", buffering=0) as f:
        for index, start in enumerate(range(0, data.size, BLOCK_SIZE)):
            block = data[start : start + BLOCK_SIZE]
            if f.readinto(block) != block.size:
                raise EntryDamaged(f"array {name!r} ends early")
            if block_digest(block) != expected[index * width : (index + 1) * width]:
                raise EntryDamaged(f"block {index} of array {name!r} does not match its digest")


# --- skeletons -------------------------------------------------------------------------------


def _raw_reference(arr: np.ndarray) -> tuple:
    """A persistent reference holding ``arr`` itself: dtype, shape, order and bytes."""
    order = "F" if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    data = _contiguous_copy(arr.T if order == "F" else arr)
    raw = data.reshape(-1).view(np.uint8).tobytes() if arr.nbytes else b""
    return ("raw", arr.dtype, arr.shape, order, raw)


def _from_raw(dtype: np.dtype, shape: tuple, order: str, raw: bytes) -> np.ndarray:
    if dtype.itemsize == 0:
        return np.zeros(shape, dtype=dtype, order=order)
    flat = np.frombuffer(bytearray(raw), dtype=dtype)
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


class _ArrayPickler(pickle.Pickler):
    def __init__(self, file: io.BufferedWriter, store_array: Any, frames: Any = None) -> None:
        super().__init__(file, protocol=5)
        self.store_array = store_array
        # id of an array pickled as bytes -> (the array, kept alive; its reference)
        self.raw: dict[int, tuple[np.ndarray, tuple]] = {}
        self.frames = frames
        self.frame_types = frames.types if frames is not None else ()
        # id of a frame -> (the frame, kept alive; its reference, None if pickled)
        self.frame_refs: dict[int, tuple[Any, tuple | None]] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.nbytes >= PICKLE_INLINE_NBYTES and storable(obj):
                return self.store_array(obj)
            if (
                type(obj) in (np.ndarray, np.memmap)
                and not obj.dtype.hasobject
                and not (obj.dtype.isnative and (obj.flags.c_contiguous or obj.flags.f_contiguous))
            ):
                # numpy (2.4) pickles non-contiguous arrays, and arrays that export no
                # buffer (datetimes), by a path that drops a non-native byte order ('>i2'
                # comes back '<i2') and copies records without their padding: such arrays
                # go as their bytes.  The same reference object each time, so that
                # pickle's memo keeps a shared array shared.
                known = self.raw.get(id(obj))
                if known is None:
                    known = self.raw[id(obj)] = (obj, _raw_reference(obj))
                return known[1]
        elif isinstance(obj, np.dtype):
            # numpy pickles a dtype by its str, which turns np.longlong into np.int64 (in
            # arrays and scalars alike): such dtypes go by their exact code instead.
            code = dtype_code(obj)
            if code != obj.str:
                return ("dtype", code, None if obj.metadata is None else dict(obj.metadata))
        elif type(obj) in self.frame_types:
            # One reference object per frame: pickle's memo then keeps a shared frame shared.
            known = self.frame_refs.get(id(obj))
            if known is None:
                try:
                    ref = ("frame", self.frames.encode(obj, self.store_array))
                except NotPlain:
                    ref = None  # pickled as pandas pickles it, its arrays as references
                known = self.frame_refs[id(obj)] = (obj, ref)
            return known[1]
        return None


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedReader, arrays: dict[str, np.ndarray]) -> None:
        super().__init__(file)
        self.arrays = arrays
        self.raw: dict[int, tuple[tuple, np.ndarray]] = {}

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple):
            if len(pid) == 3 and pid[0] == "dtype":
                return np.dtype(pid[1], metadata=pid[2]) if pid[2] is not None else np.dtype(pid[1])
            if len(pid) == 5 and pid[0] == "raw":
                # A shared array's reference is one object (from pickle's memo): one array.
                known = self.raw.get(id(pid))
                if known is None:
                    known = self.raw[id(pid)] = (pid, _from_raw(*pid[1:]))
                return known[1]
            if len(pid) == 2 and pid[0] == "frame":
                known = self.raw.get(id(pid))
                if known is None:
                    from .frames import decode

                    known = self.raw[id(pid)] = (pid, decode(pid[1], self.arrays))
                return known[1]
        try:
            return self.arrays[pid]
        except (KeyError, TypeError):
            raise EntryDamaged(f"skeleton refers to a missing array {pid!r}") from None


# --- whole results ---------------------------------------------------------------------------


def dump(result: Any, entry_dir: Path, compression: Compression | None) -> dict[str, Any]:
    """Write ``result`` into the (new, empty) folder ``entry_dir``.

    Returns the metadata to put in the entry's group attributes.  The caller
    publishes the folder; nothing here is visible to readers until then.
    """
    entry_dir = Path(entry_dir)
    arrays: dict[str, dict[str, Any]] = {}
    seen: dict[int, str] = {}
    # Every stored array is kept alive until the end: an id is unique only among live
    # objects, and the pickler drops the items a __reduce__ iterator yields as soon as
    # they are written, so the next one could reuse the id of the last.
    kept: list[np.ndarray] = []

    def store_array(arr: np.ndarray) -> str:
        # The same array object twice in a result is stored once, and loads as one object.
        name = seen.get(id(arr))
        if name is None:
            kept.append(arr)
            name = seen[id(arr)] = f"a{len(arrays)}"
            arrays[name] = write_array(entry_dir, name, arr, compression)
        return name

    meta: dict[str, Any] = {"arrays": arrays}
    if storable(result):
        store_array(result)
        meta["skeleton"] = "array"
        return meta
    frames = None
    if frame_types():  # pandas is imported: the result may hold frames
        from .frames import FrameWriter

        frames = FrameWriter()
    try:
        TreeWriter(lambda arr: "", frames).encode(result)  # a dry run: writes nothing
    except (NotPlain, RecursionError):
        pass
    else:
        meta["tree"] = TreeWriter(store_array, frames).encode(result)
        meta["skeleton"] = "json"
        return meta
    buffer = io.BytesIO()
    _ArrayPickler(buffer, store_array, frames).dump(result)
    skeleton = np.frombuffer(buffer.getbuffer(), dtype=np.uint8)
    meta["skeleton"] = "pickle"
    meta["pickle"] = write_array(entry_dir, _SKELETON, skeleton, None)
    return meta


def _unpickle_skeleton(
    entry_dir: Path, spec: dict[str, Any], arrays: dict[str, np.ndarray], trust_foreign: bool
) -> Any:
    if not trust_foreign:
        owner = _chunk_path(entry_dir / _SKELETON, (0,)).stat().st_uid
        if owner != os.getuid():
            raise UntrustedEntry(
                f"its pickled part belongs to uid {owner}, not to you (uid {os.getuid()}); "
                f"unpickling it could run that user's code"
            )
    data = read_array(entry_dir, _SKELETON, spec, None)  # checked against its digests
    return _ArrayUnpickler(io.BytesIO(data.tobytes()), arrays).load()


def load(
    entry_dir: Path, meta: dict[str, Any], mmap_mode: str | None, trust_foreign: bool = False
) -> Any:
    """Rebuild the result stored in ``entry_dir`` described by ``meta``.

    A pickled skeleton is only unpickled when its file belongs to the current user,
    or when ``trust_foreign`` is true: unpickling is code execution.

    Raises
    ------
    UntrustedEntry
        If the entry needs unpickling a file that another user owns.
    EntryDamaged
        If any part of the entry is missing or does not match its metadata.
    """
    if not isinstance(entry_dir, Path):
        entry_dir = Path(entry_dir)
    try:
        arrays = {
            name: read_array(entry_dir, name, spec, mmap_mode)
            for name, spec in meta["arrays"].items()
        }
        kind = meta["skeleton"]
        if kind == "array":
            return arrays["a0"]
        if kind == "json":
            return decode_tree(meta["tree"], arrays)
        if kind == "pickle":
            return _unpickle_skeleton(entry_dir, meta["pickle"], arrays, trust_foreign)
    except EntryDamaged:
        raise
    except Exception as exc:
        # Garbage fed to the unpickler can raise almost anything (ImportError,
        # AttributeError, struct.error...): all of it means the entry is unusable.
        raise EntryDamaged(f"{type(exc).__name__}: {exc}") from exc
    raise EntryDamaged(f"unknown skeleton kind {kind!r}")


def verify(entry_dir: Path, meta: dict[str, Any]) -> list[str]:
    """Check every byte of an entry against its digests; return the problems found."""
    problems = []
    specs = dict(meta.get("arrays", {}))
    if meta.get("skeleton") == "pickle":
        specs[_SKELETON] = meta.get("pickle")
    for name, spec in specs.items():
        try:
            arr = read_array(Path(entry_dir), name, spec, None if spec["codec"] else "r")
            _check_digests(arr, spec, name)
        except (EntryDamaged, KeyError, TypeError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}" if not isinstance(exc, EntryDamaged)
                            else str(exc))
    return problems
