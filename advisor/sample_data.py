"""The user's own input samples: calibration data for static quantisation and evaluation data for accuracy gating.

Either form is accepted, for `--calibration-data` and `--eval-data` alike:

- a folder of `.npz` / `.npy` files, one sample per file, read in file-name order. An `.npz` holds one array per
  model input, named like the input; an `.npy` is the single input of a one-input model. Evaluation samples also
  hold the expected result: `.npz` arrays named `expected` (or `expected_0`, `expected_1`, ... for several), or,
  for `.npy` inputs, a file `NAME.expected.npy` beside `NAME.npy`.
- `module:function` (or `path/to/file.py:function`) returning an iterable of samples: dicts of input name -> array
  for calibration, `(inputs, expected)` pairs for evaluation (`expected` one array or a sequence of arrays).

A sample holds one example: its arrays have the model's input shape at batch size 1, with or without that leading
batch axis of 1. Everything is checked against the model when loaded, so a wrong file is one line naming it.
A SampleSet is saved once into the run folder (`save`) and read by the isolated workers (`load`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advisor.errors import UserError
from advisor.model import ModelInfo

SYNTHETIC = "synthetic"
MAX_SAMPLES = 10_000  # a guard against a generator that never ends
SYNTHETIC_SAMPLES = 32
EXPECTED_PREFIX = "expected"


@dataclass(frozen=True)
class SampleSet:
    """Samples at batch size 1, each `{input name: array}` with the leading batch axis; `expected` (evaluation
    data only) holds each sample's expected arrays, in the same order."""

    origin: str  # the folder or callable given, or "synthetic"
    samples: tuple[dict[str, np.ndarray], ...]
    expected: tuple[tuple[np.ndarray, ...], ...] = ()

    @property
    def synthetic(self) -> bool:
        return self.origin == SYNTHETIC

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch_size: int) -> list[tuple[dict[str, np.ndarray], int]]:
        """The samples stacked into feeds of `batch_size` along the batch axis, with how many of each batch's rows
        are real: the last batch is padded by repeating its final sample (the padded rows' outputs are dropped)."""
        out = []
        for start in range(0, len(self.samples), batch_size):
            chunk = list(self.samples[start:start + batch_size])
            real = len(chunk)
            chunk += [chunk[-1]] * (batch_size - real)
            out.append(({name: np.concatenate([s[name] for s in chunk]) for name in chunk[0]}, real))
        return out

    def stacked_expected(self) -> list[np.ndarray]:
        """The expected arrays with the samples stacked on a leading axis, one array per expected output."""
        if not self.expected:
            return []
        return [np.stack([sample[i] for sample in self.expected]) for i in range(len(self.expected[0]))]

    def to_dict(self) -> dict:
        """What the report says about the data: where it came from and how many samples."""
        return {"origin": self.origin, "samples": len(self.samples), "synthetic": self.synthetic}

    def digest(self) -> str:
        """sha256 of the arrays (names, shapes, dtypes, bytes): a resumed run must be given the same data."""
        import hashlib

        digest = hashlib.sha256()
        for group in (*self.samples, *({str(i): a for i, a in enumerate(e)} for e in self.expected)):
            for name, array in group.items():
                digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def synthetic_samples(info: ModelInfo, count: int = SYNTHETIC_SAMPLES) -> SampleSet:
    """Stand-in calibration data when the user gives none: the harness's own input generator with other seeds.
    Random inputs calibrate activation ranges unlike real data; the report says the calibration was synthetic."""
    from advisor.feeds import make_feeds

    return SampleSet(SYNTHETIC, tuple(make_feeds(info, 1, seed=1000 + i) for i in range(count)))


def calibration_samples(path: Path | None, info: ModelInfo) -> SampleSet:
    """The run's calibration samples (TuneContext.calibration_path), or synthetic ones when the user gave none."""
    return load(path) if path is not None else synthetic_samples(info)


def load_calibration_data(spec: str, info: ModelInfo) -> SampleSet:
    """--calibration-data: input samples, checked against the model."""
    return _load(spec, info, "--calibration-data", with_expected=False)


def load_eval_data(spec: str, info: ModelInfo) -> SampleSet:
    """--eval-data: input samples each with its expected result, checked against the model."""
    return _load(spec, info, "--eval-data", with_expected=True)


def _load(spec: str, info: ModelInfo, option: str, with_expected: bool) -> SampleSet:
    folder = Path(spec).expanduser()
    if folder.is_dir():
        raw = _read_folder(folder, info, option, with_expected)
    else:
        from advisor.exporting.sources import split_callable

        if split_callable(spec) is None:
            raise UserError(f"{option} {spec}: no such folder, and not module:function")
        raw = _read_callable(spec, option, with_expected)
    if not raw:
        raise UserError(f"{option} {spec}: no samples (a folder of .npz/.npy files, one sample per file)")
    samples, expected = [], []
    for where, inputs, wanted in raw:
        samples.append(_checked_inputs(inputs, info, f"{option} {where}"))
        if with_expected:
            expected.append(_checked_expected(wanted, f"{option} {where}"))
    if with_expected:
        shapes = {tuple((a.shape, a.dtype.kind) for a in e) for e in expected}
        if len(shapes) > 1:
            raise UserError(f"{option} {spec}: the expected results differ in number, shape or kind between samples")
    return SampleSet(str(spec), tuple(samples), tuple(expected))


def _read_folder(folder: Path, info: ModelInfo, option: str, with_expected: bool) -> list:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npz", ".npy") and not p.name.endswith(
        f".{EXPECTED_PREFIX}.npy"))
    if len(files) > MAX_SAMPLES:
        raise UserError(f"{option} {folder}: {len(files)} files, more than the {MAX_SAMPLES} samples accepted")
    raw = []
    for path in files:
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    arrays = {key: data[key] for key in data.files}
                inputs = {k: v for k, v in arrays.items() if not k.startswith(EXPECTED_PREFIX)}
                keys = sorted((k for k in arrays if k.startswith(EXPECTED_PREFIX)), key=_expected_index)
                wanted = [arrays[k] for k in keys]
            else:
                if len(info.inputs) != 1:
                    raise UserError(f"{option} {path}: an .npy file holds one array, and the model has "
                                    f"{len(info.inputs)} inputs; use .npz with one array per input name")
                inputs = {info.inputs[0].name: np.load(path, allow_pickle=False)}
                partner = path.with_name(f"{path.stem}.{EXPECTED_PREFIX}.npy")
                wanted = [np.load(partner, allow_pickle=False)] if partner.exists() else []
        except UserError:
            raise
        except Exception as error:  # zip errors, bad headers, pickled objects
            raise UserError(f"{option} {path}: not a readable numpy file ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None
        if with_expected and not wanted:
            raise UserError(f"{option} {path}: no expected result (an array named '{EXPECTED_PREFIX}' in the .npz, "
                            f"or {path.stem}.{EXPECTED_PREFIX}.npy beside an .npy)")
        raw.append((path.name, inputs, wanted))
    return raw


def _expected_index(key: str) -> int:
    suffix = key[len(EXPECTED_PREFIX):].lstrip("_")
    return int(suffix) if suffix.isdigit() else 0


def _read_callable(spec: str, option: str, with_expected: bool) -> list:
    from advisor.exporting.torch_sources import import_callable

    function = import_callable(spec)
    try:
        produced = function()
        if not isinstance(produced, Iterable) or isinstance(produced, Mapping):
            raise UserError(f"{option} {spec} returned {type(produced).__name__}, not an iterable of samples")
        raw = []
        for index, item in enumerate(produced):
            if index >= MAX_SAMPLES:
                raise UserError(f"{option} {spec}: more than {MAX_SAMPLES} samples")
            where = f"{spec} sample {index}"
            if with_expected:
                if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], Mapping)):
                    raise UserError(f"{option} {where}: expected an (inputs, expected) pair, got "
                                    f"{type(item).__name__}")
                inputs, wanted = item
                wanted = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
            else:
                if not isinstance(item, Mapping):
                    raise UserError(f"{option} {where}: expected a dict of input name -> array, got "
                                    f"{type(item).__name__}")
                inputs, wanted = item, []
            raw.append((where, dict(inputs), [np.asarray(w) for w in wanted]))
        return raw
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"{option} {spec} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                        ) from None


def _checked_inputs(inputs: Mapping, info: ModelInfo, where: str) -> dict[str, np.ndarray]:
    """One sample's inputs as the model takes them at batch size 1 (a missing leading batch axis is added)."""
    names = [spec.name for spec in info.inputs]
    missing = [n for n in names if n not in inputs]
    extra = [n for n in inputs if n not in names]
    if missing or extra:
        raise UserError(f"{where}: inputs {sorted(inputs)} do not match the model's {names}"
                        + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
    shapes = info.shapes_at(1)
    checked = {}
    for spec in info.inputs:
        array = np.asarray(inputs[spec.name])
        want = shapes[spec.name]
        if array.shape == want[1:] and info.batch_axis:
            array = array[np.newaxis]
        if array.shape != want:
            raise UserError(f"{where}: input {spec.name} has shape {list(array.shape)}, the model takes "
                            f"{list(want)} (one sample per file)")
        dtype = np.dtype(spec.dtype)
        if array.dtype != dtype and not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise UserError(f"{where}: input {spec.name} is {array.dtype}, the model takes {dtype}")
        checked[spec.name] = np.ascontiguousarray(array.astype(dtype, copy=False))
    return checked


def _checked_expected(wanted: Sequence, where: str) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(w) for w in wanted)
    for array in arrays:
        if array.dtype.kind not in "biuf":
            raise UserError(f"{where}: expected result of dtype {array.dtype}; numbers or booleans only")
    return arrays


def save(sample_set: SampleSet, path: Path) -> Path:
    """Write the set where the isolated workers read it (atomically: a resumed run never sees half a file)."""
    arrays: dict[str, np.ndarray] = {"meta:origin": np.asarray(sample_set.origin)}
    for index, sample in enumerate(sample_set.samples):
        arrays.update({f"in:{index}:{name}": value for name, value in sample.items()})
    for index, wanted in enumerate(sample_set.expected):
        arrays.update({f"expected:{index}:{k}": value for k, value in enumerate(wanted)})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)
    return path


def load(path: Path) -> SampleSet:
    """A set `save` wrote."""
    samples: dict[int, dict[str, np.ndarray]] = {}
    expected: dict[int, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        origin = str(data["meta:origin"])
        for key in data.files:
            kind, _, rest = key.partition(":")
            index, _, name = rest.partition(":")
            if kind == "in":
                samples.setdefault(int(index), {})[name] = data[key]
            elif kind == "expected":
                expected.setdefault(int(index), {})[int(name)] = data[key]
    return SampleSet(origin, tuple(samples[i] for i in sorted(samples)),
                     tuple(tuple(e[k] for k in sorted(e)) for _, e in sorted(expected.items())))
