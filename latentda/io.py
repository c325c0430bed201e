"""The run output store: one xarray dataset per run, written to zarr (format 3).

A run's dataset has the dimension ``time`` (analysis times, a plain float
coordinate in model time units) followed by whatever dimensions its variables
name (``member``, ``state``, ``latent``, ``obs``, ``rank``, ...).
:class:`RunWriter` buffers cycles in memory and appends them to the store in
blocks of ``block`` cycles, one ``to_zarr(append_dim="time")`` per block, so a
killed run loses at most the unflushed block and the store stays readable.

Conventions (CF-1.10 style):

- every variable and coordinate has ``units`` and ``long_name``;
- ``time`` is float64 with ``units`` without "since" (so nothing decodes it
  as a date), ``standard_name = "time"`` and ``axis = "T"``;
- ``member`` has ``standard_name = "realization"`` (an integer coordinate
  ``0 .. N-1`` is added when the caller gives none);
- no string variables: categorical coordinates are integer codes with
  ``flag_values`` / ``flag_meanings`` (see :func:`flag_coordinate`);
- attributes are stored in a netCDF-safe form: dicts, ``None`` and
  mixed lists become JSON strings, bools become ints (0/1), numpy values
  become plain numbers or lists. Read a JSON attribute with ``json.loads``.

A finished store is exported once to netCDF4 with :func:`export_netcdf`;
:func:`run_info` prints a human-readable summary (``latentda info STORE``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import xarray as xr
import zarr

from latentda._validate import check_float, check_int
from latentda.store_lock import StoreLockedError, acquire_lock, release_lock

__all__ = [
    "VarSpec",
    "RunWriter",
    "open_run",
    "export_netcdf",
    "run_info",
    "flag_coordinate",
    "read_checkpoint",
    "acquire_lock",
    "release_lock",
    "StoreLockedError",
]

#: dtypes a :class:`VarSpec` may declare
ALLOWED_DTYPES = ("float64", "float32", "int32", "int64", "bool")
#: global attributes the writer owns
RESERVED_GLOBAL_ATTRS = ("Conventions", "latentda_version", "created", "status")
#: variable attributes that belong to the encoding, not to the caller
_RESERVED_VAR_ATTRS = ("_FillValue", "missing_value", "dtype", "coordinates", "scale_factor",
                       "add_offset")
_CONVENTIONS = "CF-1.10"
_ZARR_FORMAT = 3
_DEFAULT_TIME_ATTRS = {"units": "model time units", "long_name": "analysis time"}
_MEMBER_ATTRS = {"units": "1", "long_name": "ensemble member", "standard_name": "realization"}


# ----------------------------------------------------------------------------------------------
# attributes


def _attr_value(key: str, value: Any) -> Any:
    """Return ``value`` in a form both zarr (JSON) and netCDF attributes hold unchanged."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, list | tuple):
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
        if items and all(isinstance(v, str) for v in items):
            return items
        if items and all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            return items
        # empty, nested, mixed or bool lists: netCDF has no faithful form, keep them as JSON
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"attribute {key!r} must be JSON-serialisable (got {type(value).__name__}: {err}); "
            "pass plain numbers, strings, lists or dicts of them"
        ) from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _clean_attrs(attrs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate attribute names and make every value netCDF/zarr safe."""
    if not isinstance(attrs, Mapping):
        raise ValueError(f"{where} must be a mapping of attribute names to values "
                         f"(got {type(attrs).__name__})")
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: attribute names must be non-empty strings (got {key!r})")
        out[key] = _attr_value(f"{where}[{key!r}]", value)
    return out


def _check_units_long_name(attrs: Mapping[str, Any], where: str) -> None:
    for key in ("units", "long_name"):
        value = attrs.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{where} must have a non-empty string attribute {key!r} (got {value!r}); "
                + ("use units='1' for dimensionless quantities" if key == "units"
                   else "describe the quantity in words")
            )


# ----------------------------------------------------------------------------------------------
# specifications


@dataclass(frozen=True)
class VarSpec:
    """One time-dependent output variable.

    Parameters
    ----------
    name : str
        Variable name in the dataset.
    dims : tuple of str
        Dimensions after the leading ``time`` dimension, e.g. ``("member", "state")``,
        or ``()`` for a scalar diagnostic per cycle.
    dtype : str
        One of ``float64``, ``float32``, ``int32``, ``int64``, ``bool``.
    attrs : dict
        Variable attributes; must include non-empty string ``units`` and ``long_name``.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str = "float64"
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"VarSpec.name must be a Python identifier (got {self.name!r})")
        if isinstance(self.dims, str):
            raise ValueError(f"VarSpec {self.name!r}: dims must be a tuple of dimension names "
                             f"(got the string {self.dims!r}; write ({self.dims!r},))")
        dims = tuple(self.dims)
        for d in dims:
            if not isinstance(d, str) or not d.isidentifier():
                raise ValueError(f"VarSpec {self.name!r}: dimension names must be identifiers "
                                 f"(got {d!r})")
        if "time" in dims:
            raise ValueError(f"VarSpec {self.name!r}: dims must exclude 'time' (the writer adds "
                             f"it as the leading dimension; got {dims})")
        if len(set(dims)) != len(dims):
            raise ValueError(f"VarSpec {self.name!r}: repeated dimension in {dims}")
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError:
            dtype = str(self.dtype)
        if dtype not in ALLOWED_DTYPES:
            raise ValueError(f"VarSpec {self.name!r}: dtype must be one of {ALLOWED_DTYPES} "
                             f"(got {self.dtype!r})")
        attrs = dict(self.attrs) if isinstance(self.attrs, Mapping) else self.attrs
        _check_units_long_name(attrs if isinstance(attrs, Mapping) else {},
                               f"VarSpec {self.name!r}")
        bad = [k for k in attrs if k in _RESERVED_VAR_ATTRS]
        if bad:
            raise ValueError(f"VarSpec {self.name!r}: attributes {bad} are set by the writer "
                             "(NaN fill for floats); remove them")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "attrs", _clean_attrs(attrs, f"VarSpec {self.name!r} attrs"))


def flag_coordinate(dim: str, names: Sequence[str], long_name: str,
                    dtype: str = "int32") -> tuple[str, np.ndarray, dict]:
    """Build a categorical coordinate as integer codes with CF flag attributes.

    Zarr format 3 has no stable string type, so a coordinate such as species
    names is stored as codes ``0 .. K-1`` with ``flag_values`` and
    ``flag_meanings`` (blank-separated names).

    Parameters
    ----------
    dim : str
        Dimension the coordinate runs along.
    names : sequence of str
        Category names, unique and without whitespace.
    long_name : str
        Description of the coordinate.
    dtype : str
        Integer dtype of the codes.

    Returns
    -------
    tuple
        ``(dim, codes, attrs)``, ready for ``RunWriter(coords={name: ...})``.
    """
    names = list(names)
    if not names or not all(isinstance(s, str) and s and not any(c.isspace() for c in s)
                            for s in names):
        raise ValueError(f"names must be non-empty strings without whitespace (got {names!r})")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique (got {names!r})")
    codes = np.arange(len(names), dtype=np.dtype(dtype))
    attrs = {"units": "1", "long_name": long_name, "flag_values": codes.tolist(),
             "flag_meanings": " ".join(names)}
    return dim, codes, attrs


@dataclass
class _Coord:
    dims: tuple[str, ...]
    values: np.ndarray
    attrs: dict[str, Any]


def _parse_coords(coords: Mapping[str, Any]) -> dict[str, _Coord]:
    if not isinstance(coords, Mapping):
        raise ValueError("coords must be a mapping name -> (dims, values, attrs) "
                         f"(got {type(coords).__name__})")
    out: dict[str, _Coord] = {}
    for name, spec in coords.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"coords: names must be identifiers (got {name!r})")
        if name == "time":
            raise ValueError("coords must not contain 'time': the writer builds it from the "
                             "times passed to write(); set its attributes with time_attrs")
        if not isinstance(spec, tuple | list) or len(spec) != 3:
            raise ValueError(f"coords[{name!r}] must be a tuple (dims, values, attrs)")
        dims, values, attrs = spec
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        if "time" in dims:
            raise ValueError(f"coords[{name!r}] must not run along 'time' (got dims {dims})")
        values = np.asarray(values)
        if values.dtype.kind not in "biuf":
            raise ValueError(
                f"coords[{name!r}] must be numeric (got dtype {values.dtype}); zarr format 3 has "
                "no stable string type: store categories as integer codes with flag_values/"
                "flag_meanings (latentda.io.flag_coordinate builds them)")
        if values.ndim != len(dims):
            raise ValueError(f"coords[{name!r}] has {values.ndim} dimension(s) but names "
                             f"{len(dims)}: {dims}")
        attrs = dict(attrs) if isinstance(attrs, Mapping) else attrs
        if not isinstance(attrs, dict):
            raise ValueError(f"coords[{name!r}] attrs must be a dict (got {type(attrs).__name__})")
        if "flag_meanings" in attrs and "units" not in attrs:
            attrs["units"] = "1"  # flag (categorical) coordinates are dimensionless codes
        if name == "member":
            if attrs.setdefault("standard_name", "realization") != "realization":
                raise ValueError("coords['member'] standard_name must be 'realization' "
                                 f"(got {attrs['standard_name']!r})")
        _check_units_long_name(attrs, f"coords[{name!r}]")
        bad = [k for k in attrs if k in _RESERVED_VAR_ATTRS]
        if bad:
            raise ValueError(f"coords[{name!r}]: attributes {bad} are set by the writer; "
                             "remove them")
        out[name] = _Coord(dims, values, _clean_attrs(attrs, f"coords[{name!r}] attrs"))
    return out


# ----------------------------------------------------------------------------------------------
# the writer


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence zarr's notice that consolidated metadata is not (yet) in the v3 spec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs"))


class RunWriter:
    """Write one run's cycles to a zarr (format 3) store, appended in blocks along ``time``.

    Parameters
    ----------
    path : str or os.PathLike
        Store directory to create.
    variables : sequence of VarSpec
        The time-dependent variables; every cycle writes every one of them.
    coords : mapping
        Non-time coordinates: ``name -> (dims, values, attrs)``; attrs need
        ``units`` and ``long_name``. A ``member`` coordinate (0 .. N-1,
        ``standard_name="realization"``) is added when ``member`` is a dimension
        without one.
    sizes : mapping, optional
        Sizes of dimensions that have no coordinate (e.g. ``{"obs": 40, "rank": 41}``).
    attrs : mapping, optional
        Global attributes (JSON-serialisable). Nested values are stored as JSON strings,
        bools as ints. ``Conventions``, ``latentda_version``, ``created`` and ``status``
        are set by the writer.
    time_attrs : mapping, optional
        Attributes of ``time``; default ``{"units": "model time units",
        "long_name": "analysis time"}``. ``units`` must not contain "since".
    block : int
        Cycles per flush, and the zarr chunk length along ``time``.
    chunks : mapping, optional
        Chunk sizes of other dimensions (default: whole), e.g. ``{"member": 100}``.
    overwrite : bool
        Replace an existing store at ``path``. Without it an existing path raises
        :class:`FileExistsError`. The old store is removed only after every argument
        has been validated, when the writer creates the new one.

    Attributes
    ----------
    n_written : int
        Cycles durably written to the store.
    n_buffered : int
        Cycles held in memory, written at the next flush.
    """

    def __init__(self, path: str | os.PathLike, *, variables: Sequence[VarSpec],
                 coords: Mapping[str, tuple[str | tuple[str, ...], np.ndarray, dict]],
                 sizes: Mapping[str, int] | None = None,
                 attrs: Mapping[str, Any] | None = None,
                 time_attrs: Mapping[str, Any] | None = None,
                 block: int = 50, chunks: Mapping[str, int] | None = None,
                 overwrite: bool = False, resume: bool = False,
                 break_lock: bool = False) -> None:
        # ---- validation (nothing on disk is touched before it all succeeds) ----
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ValueError(f"path must be a non-empty str or os.PathLike (got {path!r})")
        self.path = Path(path)
        self.block = check_int("block", block, min_value=1)
        if not isinstance(overwrite, bool):
            raise ValueError(f"overwrite must be True or False (got {overwrite!r})")

        variables = list(variables)
        if not variables:
            raise ValueError("variables must name at least one VarSpec")
        for v in variables:
            if not isinstance(v, VarSpec):
                raise ValueError(f"variables must be VarSpec instances (got {type(v).__name__})")
        names = [v.name for v in variables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variables: duplicate names {dupes}")
        if "time" in names:
            raise ValueError("variables: 'time' is reserved for the time coordinate")

        coord_specs = _parse_coords(coords)
        clash = sorted(set(names) & set(coord_specs))
        if clash:
            raise ValueError(f"variables {clash} have the same names as coordinates; rename them")

        # dimension sizes: from coordinates, then from `sizes`, consistent
        dim_sizes: dict[str, int] = {}
        dim_source: dict[str, str] = {}
        for cname, c in coord_specs.items():
            for d, s in zip(c.dims, c.values.shape, strict=True):
                if d in dim_sizes and dim_sizes[d] != s:
                    raise ValueError(f"dimension {d!r} has size {dim_sizes[d]} from "
                                     f"{dim_source[d]} but {s} from coords[{cname!r}]")
                dim_sizes[d], dim_source[d] = s, f"coords[{cname!r}]"
        if sizes is not None:
            if not isinstance(sizes, Mapping):
                raise ValueError(f"sizes must be a mapping dim -> size (got {sizes!r})")
            for d, s in sizes.items():
                if d == "time":
                    raise ValueError("sizes must not contain 'time' (it grows as cycles are "
                                     "written)")
                s = check_int(f"sizes[{d!r}]", s, min_value=1)
                if d in dim_sizes and dim_sizes[d] != s:
                    raise ValueError(f"sizes[{d!r}] = {s} disagrees with {dim_source[d]} "
                                     f"(size {dim_sizes[d]})")
                dim_sizes[d], dim_source[d] = s, f"sizes[{d!r}]"
        for v in variables:
            missing = [d for d in v.dims if d not in dim_sizes]
            if missing:
                raise ValueError(f"variable {v.name!r}: dimension(s) {missing} have no size; "
                                 "give them in sizes= or through a coordinate in coords=")
        for d, s in dim_sizes.items():
            if s < 1:
                raise ValueError(f"dimension {d!r} must have size >= 1 (got {s})")
        if "member" in dim_sizes and "member" not in coord_specs:
            coord_specs["member"] = _Coord(("member",), np.arange(dim_sizes["member"]),
                                           dict(_MEMBER_ATTRS))

        chunk_sizes: dict[str, int] = {}
        for d, c in (chunks or {}).items():
            if d == "time":
                raise ValueError("chunks must not contain 'time': its chunk length is block")
            if d not in dim_sizes:
                raise ValueError(f"chunks[{d!r}]: unknown dimension (known: {sorted(dim_sizes)})")
            chunk_sizes[d] = min(check_int(f"chunks[{d!r}]", c, min_value=1), dim_sizes[d])

        global_attrs = _clean_attrs(attrs or {}, "attrs")
        reserved = [k for k in global_attrs if k in RESERVED_GLOBAL_ATTRS]
        if reserved:
            raise ValueError(f"attrs {reserved} are set by the writer; remove them")
        t_attrs = dict(_DEFAULT_TIME_ATTRS)
        t_attrs.update(_clean_attrs(time_attrs or {}, "time_attrs"))
        _check_units_long_name(t_attrs, "time_attrs")
        if "since" in t_attrs["units"].lower():
            raise ValueError(
                f"time_attrs['units'] must not contain 'since' (got {t_attrs['units']!r}): "
                "time is stored as plain model time, e.g. units='model time units'")
        for key, want in (("standard_name", "time"), ("axis", "T")):
            if t_attrs.setdefault(key, want) != want:
                raise ValueError(f"time_attrs[{key!r}] must be {want!r} (got {t_attrs[key]!r})")

        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the "
                             "store, overwrite replaces it")
        if resume and not _is_zarr_store(self.path):
            raise FileNotFoundError(f"cannot resume: {str(self.path)!r} is not an existing run "
                                    "store; run without --resume to start it")
        if os.path.lexists(self.path) and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"output store {str(self.path)!r} already exists; pass --overwrite (CLI) or "
                    "overwrite=True to replace it, or choose another path")
            if not (_is_zarr_store(self.path) or (self.path.is_dir()
                                                  and not any(self.path.iterdir()))):
                raise FileExistsError(
                    f"{str(self.path)!r} exists and is not a zarr store; refusing to delete it "
                    "even with overwrite=True; remove it yourself or choose another path")

        from latentda import __version__

        self.variables: dict[str, VarSpec] = {v.name: v for v in variables}
        self.sizes: dict[str, int] = dict(dim_sizes)
        self._shapes = {v.name: tuple(dim_sizes[d] for d in v.dims) for v in variables}
        self._coords = coord_specs
        self._time_attrs = t_attrs
        self._attrs: dict[str, Any] = {
            **global_attrs,
            "Conventions": _CONVENTIONS,
            "latentda_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "running",
        }
        self._chunks = {d: chunk_sizes.get(d, s) for d, s in dim_sizes.items()}
        self._buffers = {v.name: np.empty((self.block, *self._shapes[v.name]), dtype=v.dtype)
                         for v in variables}
        self._times = np.empty(self.block, dtype=np.float64)
        self._nbuf = 0
        self._last_time = -math.inf
        self.n_written = 0
        self._closed = False
        self._interrupted = False  # a flush failed part-way: some arrays may be longer
        self._checkpoint: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None

        # ---- take the lock, then create (or reopen) the store ----
        acquire_lock(self.path, break_lock=break_lock)
        try:
            if resume:
                self._reopen()
            else:
                if os.path.lexists(self.path):
                    shutil.rmtree(self.path)
                self._create()
        except BaseException:
            release_lock(self.path)
            raise

    # ------------------------------------------------------------------------------------------
    @property
    def n_buffered(self) -> int:
        """Cycles written with :meth:`write` but not yet flushed to the store."""
        return self._nbuf

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def _empty_dataset(self) -> xr.Dataset:
        """The store's layout with zero cycles: every variable, coordinate and attribute."""
        data = {name: (("time", *spec.dims), self._buffers[name][:0], dict(spec.attrs))
                for name, spec in self.variables.items()}
        coords: dict[str, Any] = {"time": ("time", self._times[:0].copy(),
                                           dict(self._time_attrs))}
        coords.update({n: (c.dims, c.values, dict(c.attrs)) for n, c in self._coords.items()})
        return xr.Dataset(data, coords=coords, attrs=dict(self._attrs))

    def _create(self) -> None:
        ds = self._empty_dataset()
        encoding: dict[str, dict[str, Any]] = {
            "time": {"chunks": (self.block,), "_FillValue": None}}
        for name, spec in self.variables.items():
            enc: dict[str, Any] = {
                "chunks": (self.block, *(self._chunks[d] for d in spec.dims))}
            enc["_FillValue"] = np.nan if spec.dtype.startswith("float") else None
            encoding[name] = enc
        for name, c in self._coords.items():
            encoding[name] = {"chunks": tuple(self._chunks.get(d, s) for d, s in
                                              zip(c.dims, c.values.shape, strict=True)),
                              "_FillValue": np.nan if c.values.dtype.kind == "f" else None}
        with _quiet_zarr():
            ds.to_zarr(self.path, mode="w-", zarr_format=_ZARR_FORMAT, encoding=encoding,
                       consolidated=True)

    def _reopen(self) -> None:
        """Continue an existing store: keep its consistent cycles, drop a partial block."""
        with _quiet_zarr():
            view = zarr.open_group(self.path, mode="r", zarr_format=_ZARR_FORMAT,
                                   use_consolidated=True)
            names = set(view.array_keys())
            missing = sorted(set(self.variables) - names)
            if missing:
                raise ValueError(f"cannot resume {str(self.path)!r}: it lacks the variables "
                                 f"{missing} of this run (was it written by another case?); "
                                 "use --overwrite to start again")
            for name in self.variables:
                shape = tuple(view[name].shape[1:])
                if shape != self._shapes[name]:
                    raise ValueError(f"cannot resume {str(self.path)!r}: variable {name!r} has "
                                     f"shape {shape} there but {self._shapes[name]} in this run")
            n = int(view["time"].shape[0])  # the consolidated (consistent) length
            old_attrs = dict(view.attrs)
            times = np.asarray(view["time"][:n]) if n else np.empty(0)
        self.n_written = n
        self._last_time = float(times[-1]) if n else -math.inf
        self._attrs.update({k: v for k, v in old_attrs.items()
                            if k not in ("status",) and k not in self._attrs})
        self._attrs["created"] = old_attrs.get("created", self._attrs["created"])
        self._attrs["status"] = "running"
        with _quiet_zarr():
            self._truncate_to_written()  # discard a block half-written when the run died
            group = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT,
                                    use_consolidated=False)
            group.attrs.update({"status": "running"})
            zarr.consolidate_metadata(self.path, zarr_format=_ZARR_FORMAT)

    def write(self, time: float, *, checkpoint: tuple[Mapping[str, np.ndarray],
                                                     Mapping[str, Any]] | None = None,
              **values: Any) -> None:
        """Buffer one cycle; flush when ``block`` cycles are buffered.

        Parameters
        ----------
        time : float
            Analysis time, finite and larger than every earlier time.
        checkpoint : (arrays, meta), optional
            The state needed to resume after this cycle (e.g. the analysis ensemble and
            a filter's adaptive parameters). The newest one is stored with each flush,
            atomically with the block (see :func:`read_checkpoint`). The writer keeps a
            reference to the arrays: do not modify them afterwards.
        **values : array_like
            One array per VarSpec, of the spec's shape (sizes of its ``dims``) and a
            dtype castable to the spec's dtype. Use NaN for "not available".

        Raises
        ------
        ValueError
            If a variable is unknown or missing, or its shape or dtype is wrong; the
            cycle is then not buffered.
        """
        if self._closed:
            raise RuntimeError(f"RunWriter for {str(self.path)!r} is closed; create a new one")
        t = check_float("time", time)
        if t <= self._last_time:
            raise ValueError(f"time must increase from cycle to cycle (got {t} after "
                             f"{self._last_time})")
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            raise ValueError(f"unknown variable(s) {unknown}; the writer has "
                             f"{sorted(self.variables)}")
        missing = sorted(set(self.variables) - set(values))
        if missing:
            raise ValueError(f"variable(s) {missing} missing from this cycle; every cycle writes "
                             "every variable (use NaN for 'not available')")
        checked: dict[str, np.ndarray] = {}
        for name, value in values.items():
            spec = self.variables[name]
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, spec.dtype,
                                                               casting="same_kind"):
                raise ValueError(f"variable {name!r} has dtype {arr.dtype}, which cannot be "
                                 f"cast to its declared dtype {spec.dtype}")
            if arr.shape != self._shapes[name]:
                raise ValueError(f"variable {name!r} must have shape {self._shapes[name]} "
                                 f"(dims {spec.dims}) (got {arr.shape})")
            checked[name] = arr
        if self._nbuf == self.block:  # an earlier flush failed: retry it before buffering
            self.flush()
        i = self._nbuf
        for name, arr in checked.items():
            self._buffers[name][i] = arr
        self._times[i] = t
        self._last_time = t
        self._nbuf += 1
        if checkpoint is not None:
            arrays, meta = checkpoint
            self._checkpoint = ({k: np.asarray(v) for k, v in arrays.items()},
                                json.loads(json.dumps(dict(meta), default=_json_default)))
        if self._nbuf == self.block:
            self.flush()

    def flush(self) -> None:
        """Append the buffered cycles to the store.

        Each array is resized and written directly through zarr (measured 2.5x
        faster than an xarray ``to_zarr`` append for ~25 arrays); ``time`` is written
        last and the consolidated metadata, which readers use, is rewritten only
        when every array is complete, so a reader never sees a half-written block.
        If an earlier flush failed part-way (some arrays appended, others not), the
        arrays are first cut back to the ``n_written`` durable cycles, so retrying
        never misaligns the store.
        """
        k = self._nbuf
        if k == 0:
            return
        n0 = self.n_written
        with _quiet_zarr():
            if self._interrupted:
                self._truncate_to_written()
            self._interrupted = True
            group = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT,
                                    use_consolidated=False)
            for name in (*self.variables, "time"):
                arr = group[name]
                buf = self._times if name == "time" else self._buffers[name]
                arr.resize((n0 + k, *arr.shape[1:]))
                arr[n0:n0 + k] = buf[:k]
            old = self._write_checkpoint(group, n0 + k)
            zarr.consolidate_metadata(self.path, zarr_format=_ZARR_FORMAT)
            self._interrupted = False
            if old:  # only now is the new checkpoint the one readers see
                cg = group["checkpoint"]
                for key in old:
                    with contextlib.suppress(KeyError):
                        del cg[key]
        self.n_written += k
        self._nbuf = 0

    def _write_checkpoint(self, group: zarr.Group, n: int) -> list[str]:
        """Store the pending checkpoint as ``checkpoint/<name>_<n>``; return stale keys.

        Nothing outside the ``checkpoint`` subgroup changes, and the previous
        checkpoint is deleted only after the metadata naming ``n`` cycles has been
        consolidated, so a kill at any point leaves a checkpoint that matches the
        consolidated cycle count (:func:`read_checkpoint`).
        """
        if self._checkpoint is None:
            return []
        arrays, meta = self._checkpoint
        cg = group.require_group("checkpoint")
        old = [key for key in cg.array_keys() if not key.endswith(f"_{n}")]
        names = sorted(arrays)
        for name in names:
            arr = cg.create_array(f"{name}_{n}", data=np.ascontiguousarray(arrays[name]),
                                  overwrite=True)
            arr.attrs.update({"cycles": n, "arrays": json.dumps(names),
                              "meta": json.dumps(meta)})
        self._checkpoint = None
        return old

    def _truncate_to_written(self) -> None:
        group = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT,
                                use_consolidated=False)
        for name in ("time", *self.variables):
            arr = group[name]
            if arr.shape[0] != self.n_written:
                arr.resize((self.n_written, *arr.shape[1:]))

    def _finish(self, status: str) -> None:
        self._attrs["status"] = status
        with _quiet_zarr():
            group = zarr.open_group(self.path, mode="r+", zarr_format=_ZARR_FORMAT)
            group.attrs.update({"status": status})
            zarr.consolidate_metadata(self.path, zarr_format=_ZARR_FORMAT)

    def close(self, status: str | None = None) -> None:
        """Flush, set the final ``status`` attribute and consolidate the metadata.

        Parameters
        ----------
        status : str, optional
            Final status; default ``"complete"``. Closing twice does nothing.
        """
        if self._closed:
            return
        if status is None:
            status = "complete"
        if not isinstance(status, str) or not status:
            raise ValueError(f"status must be a non-empty string (got {status!r})")
        try:
            self.flush()
            self._finish(status)
        finally:
            self._closed = True
            release_lock(self.path)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        if self._closed:
            return
        # keep the complete cycles, record the failure, never hide the original exception
        self._closed = True
        message = f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__
        try:
            self.flush()
        except Exception:
            with contextlib.suppress(Exception), _quiet_zarr():
                self._truncate_to_written()  # keep the store consistent for consolidation
        with contextlib.suppress(Exception):
            self._finish(f"failed: {message[:500]}")
        release_lock(self.path)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"RunWriter({str(self.path)!r}, {len(self.variables)} variables, "
                f"block={self.block}, n_written={self.n_written}, {state})")


# ----------------------------------------------------------------------------------------------
# reading, export, summary


def _existing_store(path: str | os.PathLike, name: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"{name} must be a str or os.PathLike (got {path!r})")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no run store at {str(p)!r}")
    if not _is_zarr_store(p):
        raise ValueError(f"{name} {str(p)!r} is not a zarr store (no zarr.json)")
    return p


def read_checkpoint(path: str | os.PathLike) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """The checkpoint that matches the store's consistent (consolidated) cycle count.

    Returns
    -------
    (n_cycles, arrays, meta)
        The number of cycles the checkpoint follows, its arrays and its metadata.

    Raises
    ------
    ValueError
        If the store has no checkpoint for its cycle count (no block was flushed yet).
    """
    p = _existing_store(path, "store")
    with _quiet_zarr():
        view = zarr.open_group(p, mode="r", zarr_format=_ZARR_FORMAT, use_consolidated=True)
        n = int(view["time"].shape[0])
        raw = zarr.open_group(p, mode="r", zarr_format=_ZARR_FORMAT, use_consolidated=False)
        keys = list(raw["checkpoint"].array_keys()) if "checkpoint" in raw.group_keys() else []
        first = next((k for k in keys if k.endswith(f"_{n}")), None)
        if n == 0 or first is None:
            raise ValueError(f"store {str(p)!r} has no checkpoint for its {n} cycles (no block "
                             "was flushed yet); start the run again with --overwrite")
        attrs = dict(raw["checkpoint"][first].attrs)
        arrays = {name: np.asarray(raw["checkpoint"][f"{name}_{n}"][...])
                  for name in json.loads(attrs["arrays"])}
    return n, arrays, json.loads(attrs["meta"])


def open_run(path: str | os.PathLike) -> xr.Dataset:
    """Open a run store lazily (dask-backed) as an :class:`xarray.Dataset`.

    Uses the consolidated metadata (a consistent view even if a run was killed in
    the middle of a flush), keeps ``time`` as plain floats (no date or timedelta
    decoding) and masks the NaN fill values.
    """
    p = _existing_store(path)
    with _quiet_zarr():
        return xr.open_zarr(p, zarr_format=_ZARR_FORMAT, consolidated=None,
                            decode_times=False, decode_timedelta=False)


def _netcdf_attrs(attrs: Mapping[str, Any], dtype: np.dtype | None = None) -> dict[str, Any]:
    out = _clean_attrs(attrs, "attrs")
    if dtype is not None and "flag_values" in out and isinstance(out["flag_values"], list):
        # CF: flag_values have the variable's type (bool variables are stored as int8)
        out["flag_values"] = np.asarray(out["flag_values"],
                                        dtype=np.int8 if dtype == np.bool_ else dtype)
    return out


def export_netcdf(store: str | os.PathLike, out: str | os.PathLike,
                  overwrite: bool = False) -> Path:
    """Export a run store to one netCDF4 file (engine ``netcdf4``).

    Parameters
    ----------
    store : str or os.PathLike
        The zarr run store.
    out : str or os.PathLike
        The netCDF file to write; written to a temporary file beside it first, then
        moved into place, so a failed export leaves no partial file.
    overwrite : bool
        Replace an existing ``out``; without it an existing file raises
        :class:`FileExistsError`.

    Returns
    -------
    pathlib.Path
        The path of the written file.
    """
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False (got {overwrite!r})")
    if not isinstance(out, str | os.PathLike) or not os.fspath(out):
        raise ValueError(f"out must be a non-empty str or os.PathLike (got {out!r})")
    out_path = Path(out)
    src = _existing_store(store, "store")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{str(out_path)!r} already exists; pass --overwrite (CLI) or "
                              "overwrite=True to replace it")
    if out_path.is_dir():
        raise ValueError(f"out {str(out_path)!r} is a directory; give a file name")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"directory {str(out_path.parent)!r} does not exist")
    with open_run(src) as ds:
        ds = ds.copy()
        ds.attrs = _netcdf_attrs(ds.attrs)
        encoding: dict[str, dict[str, Any]] = {}
        for name, var in ds.variables.items():
            var.encoding = {}
            var.attrs = _netcdf_attrs(var.attrs, var.dtype)
            if var.dtype.kind == "f":
                encoding[name] = {"_FillValue": None if name == "time" else np.nan}
            else:
                encoding[name] = {"_FillValue": None}
            if var.ndim > 0 and name != "time":
                encoding[name].update(zlib=True, complevel=4)
        tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
        try:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding,
                         unlimited_dims=["time"])
            os.replace(tmp, out_path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return out_path


def _short(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def run_info(path: str | os.PathLike) -> str:
    """Return a human-readable summary of a run store (``latentda info STORE``).

    Lists the status, version, seed and case name, the number of cycles and the
    time range, the dimensions, the coordinates and variables with long names and
    units, and the remaining global attributes.
    """
    p = _existing_store(path)
    with open_run(p) as ds:
        attrs = ds.attrs
        n = ds.sizes.get("time", 0)
        t_units = ds["time"].attrs.get("units", "") if "time" in ds.variables else ""
        lines = [f"run store: {p}"]
        for key in ("status", "case_name", "case", "seed", "latentda_version", "created"):
            if key in attrs:
                lines.append(f"  {key}: {_short(attrs[key])}")
        if n:
            t = ds["time"].values
            lines.append(f"  cycles: {n}   time: {t[0]:g} .. {t[-1]:g} [{t_units}]")
        else:
            lines.append("  cycles: 0 (no cycle written yet)")
        lines.append("dimensions: " + ", ".join(f"{d}={s}" for d, s in ds.sizes.items()))

        def describe(name: str) -> str:
            var = ds[name]
            dims = "(" + ", ".join(var.dims) + ")"
            long_name = var.attrs.get("long_name", "?")
            units = var.attrs.get("units", "?")
            return f"  {name:<18} {dims:<24} {str(var.dtype):<8} {long_name} [{units}]"

        lines.append("coordinates:")
        lines += [describe(str(c)) for c in sorted(ds.coords, key=lambda c: c != "time")]
        lines.append("variables:")
        lines += [describe(str(v)) for v in ds.data_vars]
        shown = {"status", "case_name", "case", "seed", "latentda_version", "created"}
        others = [k for k in attrs if k not in shown]
        if others:
            lines.append("attributes:")
            lines += [f"  {k}: {_short(attrs[k])}" for k in others]
    return "\n".join(lines)

