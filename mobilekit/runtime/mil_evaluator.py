"""A Core ML program evaluator for machines without Core ML (Linux).

Core ML executes only on macOS/iOS, and coremltools' Linux wheel cannot run a model. But a
saved `.mlpackage` loads back into its MIL program (the ops coremltools chose, with their
weights), and this module executes that program op by op in numpy: the graph that reaches
the phone is run before it gets there — its state updates, its masks, its fused attention,
its quantized weights.

How it computes:
  - Ops run in the program's order. Each op's value comes from coremltools' own op
    definition (`value_inference`, the function it uses to fold constants) wherever that
    exists; `KERNELS` below holds what it lacks (states, silu, slice_update in place, a
    vectorized exact GELU), each written from the op's specification in coremltools' op
    docs. Quantized weights are dequantized once, at load, by their constexpr op's own
    `materialized_val_inference`.
  - An op type the evaluator does not know stops the load with `UnsupportedOp` naming it:
    nothing is skipped or guessed.
  - States (`read_state` / `coreml_update_state`) live in an `EvaluatorState` between calls,
    as Core ML's `MLState` does: `make_state()` per sequence, each `predict` reads and writes it.
  - Precision. "model" (the default) keeps every tensor at the dtype the program declares:
    an fp16 program's tensors are rounded to fp16 after every op, an fp32 program computes in
    fp32 around its fp16 states — what Core ML's compute precision means. Inside one op
    (a matmul's sums, a softmax, attention) arithmetic is fp32, and the result is rounded
    once to the declared dtype; Core ML's kernels differ per compute unit (the Neural Engine
    accumulates in fp16 in places), so fp16 results here are an estimate of the device's,
    not its bits. "fp32" widens every fp16 tensor (states too) to fp32: the graph's math
    without fp16 rounding. "fp16" rounds every float tensor to fp16 (an fp32 program as a
    GPU/Neural Engine in fp16 would approximately run it).

Values are held as float32 numpy arrays whatever their declared float type: a tensor
declared fp16 holds fp16-representable values (rounding through float16 after each op), so
arithmetic needs no conversion and weights are widened once.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from functools import lru_cache
from types import MethodType
from typing import Callable

import numpy as np

from mobilekit.errors import BundleError, TargetUnavailable
from mobilekit.formats.coreml import load_program

PRECISIONS = ("model", "fp16", "fp32")


class UnsupportedOp(TargetUnavailable):
    """The program uses a MIL op the evaluator has no kernel for."""


class EvaluationError(BundleError):
    """An op failed or produced a value its declared type does not allow."""


# --- kernels ----------------------------------------------------------------------------
# Op types computed by coremltools' own op definition (`value_inference`). Listed, not
# discovered: each is covered by a test against hand-computed values, and an op coremltools
# can fold is not thereby one whose folding code handles runtime values.
VALUE_INFERENCE_OPS = frozenset({
    # arithmetic
    "abs", "add", "sub", "mul", "real_div", "floor_div", "pow", "maximum", "minimum",
    "exp", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "softplus", "clip",
    "reduce_max", "reduce_mean", "reduce_sum", "softmax", "layer_norm",
    "matmul", "scaled_dot_product_attention",
    # comparisons and selection
    "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
    # shapes and data movement
    "shape", "fill_like", "expand_dims", "squeeze", "transpose", "tile",
    "concat", "split", "stack", "gather", "identity",
})

# Ops that only move or select elements: their output holds input values unchanged, so it
# needs no rounding to its declared type (coreml_update_state's is the state, rounded as stored).
DATA_MOVEMENT_OPS = frozenset({
    "reshape", "expand_dims", "squeeze", "transpose", "tile", "concat", "split", "stack",
    "slice_by_index", "slice_update", "gather", "select", "identity", "read_state", "coreml_update_state",
})

MATMUL_OPS = frozenset({"linear", "matmul", "scaled_dot_product_attention"})

# Ops whose value is computed once, at load.
CONSTANT_OPS = frozenset({"const"})
# The one constexpr op mobilekit's quantized schemes emit (palettized or sparse weights
# would add others, each with its own materialized_val_inference, and a test).
DEQUANTIZING_OPS = frozenset({"constexpr_blockwise_shift_scale"})


def _silu(op, bound, call):
    # MIL silu: x * sigmoid(x) (no value_inference in coremltools)
    x = bound.x.val
    return x / (1.0 + np.exp(-x))


def _gelu(op, bound, call):
    # coremltools' EXACT branch runs math.erf per element in Python (np.vectorize): the same
    # formula, 0.5 x (1 + erf(x / sqrt 2)), vectorized. The approximations are vectorized there.
    if bound.mode.val != "EXACT":
        return type(op).value_inference(bound)
    import torch

    x = bound.x.val
    erf = torch.erf(torch.from_numpy(np.asarray(x, dtype=np.float64) / math.sqrt(2.0))).numpy()
    return 0.5 * x * (1.0 + erf)


def _slice_update(op, bound, call):
    # MIL slice_update: x with x[begin:end:stride] (masks as slice_by_index) replaced by
    # `update`. coremltools' value_inference copies x; a KV cache is updated once per layer
    # per call, so x is written in place when no other live value shares its memory.
    from coremltools.converters.mil.mil.ops.defs._utils import solve_slice_by_index_slice

    x = bound.x.val
    slices = solve_slice_by_index_slice(
        x.shape, bound.begin.val, bound.end.val,
        None if bound.stride is None else list(bound.stride.val),
        None if bound.begin_mask is None else bound.begin_mask.val,
        None if bound.end_mask is None else bound.end_mask.val,
        None if bound.squeeze_mask is None else bound.squeeze_mask.val,
    )
    out = x if call.may_overwrite("x") else x.copy()
    target = out[slices]
    update = np.asarray(bound.update.val)
    if update.size != target.size:
        raise EvaluationError(
            f"slice_update {op.name}: update has shape {update.shape} but the slice of x {x.shape} has {target.shape}"
        )
    out[slices] = update.reshape(target.shape)
    return out


def _linear(op, bound, call):
    # MIL linear: x . weight^T + bias. coremltools' value_inference computes it with
    # np.matmul, which with this numpy/OpenBLAS takes ~10 ms for one token's 576x1536
    # projection (the transposed weight misses its fast path); np.dot takes 0.06 ms.
    out = np.dot(bound.x.val, bound.weight.val.T)
    return out if bound.bias is None else out + bound.bias.val


def _reshape(op, bound, call):
    # MIL reshape (iOS 17): -1 is inferred; each 0 takes the dimension of x it lines up with
    # counting from the right, or 1 past x's rank. coremltools' value_inference re-runs
    # symbolic shape inference on every call (~70 us, the costliest op of a decode step).
    x = bound.x.val
    shape = [int(d) for d in bound.shape.val]
    for i, d in enumerate(shape):
        if d == 0:
            j = np.ndim(x) - (len(shape) - i)
            shape[i] = np.shape(x)[j] if j >= 0 else 1
    return np.reshape(x, shape)


def _select(op, bound, call):
    # MIL select: cond ? a : b, broadcast. value_inference re-infers the output type per call.
    return np.where(bound.cond.val, bound.a.val, bound.b.val)


def _cast(op, bound, call):
    # MIL cast. To a float type the value passes unchanged and is rounded like every op's
    # output, to the dtype the precision gives the output (an fp16 cast under precision
    # "fp32" stays fp32); value_inference would always round to the named type.
    from coremltools.converters.mil.mil import types

    if types.is_float(types.string_to_builtin(bound.dtype.val)):
        return bound.x.val
    return type(op).value_inference(bound)


def _slice_by_index(op, bound, call):
    # coremltools' value_inference, given a copy of `stride`: it writes into it for squeezed
    # axes, and constants are read-only here (one const may serve several ops).
    if bound.stride is not None:
        bound._input_vars["stride"] = _Value(np.array(bound.stride.val), bound.stride.dtype)
    return type(op).value_inference(bound)


def _cumsum(op, bound, call):
    # MIL cumsum: the running sum along `axis` (default 0); `exclusive` shifts it one place
    # (the first element 0, the last element's own value left out), `reverse` runs it from the
    # end. coremltools' value_inference fails on exclusive (its concatenate is malformed).
    x = np.asarray(bound.x.val)
    axis = 0 if bound.axis is None else int(bound.axis.val)
    reverse = bound.reverse is not None and bool(bound.reverse.val)
    if reverse:
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if bound.exclusive is not None and bool(bound.exclusive.val):
        shifted = np.take(out, np.arange(out.shape[axis] - 1), axis=axis)
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)), shifted], axis=axis)
    return np.flip(out, axis) if reverse else out


def _range_1d(op, bound, call):
    # MIL range_1d: numpy's arange(start, end, step). value_inference returns None past its
    # constant-folding size limit, a limit on folding, not on the op.
    return np.arange(bound.start.val, bound.end.val, bound.step.val)


def _read_state(op, bound, call):
    # A copy: the state itself changes only through coreml_update_state.
    return call.state.values[op.inputs["input"].name].copy()


def _update_state(op, bound, call):
    name = op.inputs["state"].name
    # A value already of the state's type needs no rounding (a 30-layer cache is ~3M values).
    rounded = bound.value.dtype == call.state.builtins[name]
    # The op's output is the state's new value: a read-only view, so nothing written in place
    # later in the program reaches the state.
    return _readonly(call.state.store(name, bound.value.val, rounded).view())


# op type -> kernel(op, bound op, call) -> value (a tuple for ops with several outputs)
KERNELS: dict[str, Callable] = {
    "silu": _silu,
    "gelu": _gelu,
    "slice_update": _slice_update,
    "linear": _linear,
    "reshape": _reshape,
    "cast": _cast,
    "slice_by_index": _slice_by_index,
    "select": _select,
    "cumsum": _cumsum,
    "range_1d": _range_1d,
    "read_state": _read_state,
    "coreml_update_state": _update_state,
}


def _value_inference(op, bound, call):
    return type(op).value_inference(bound)


def supported_ops() -> list[str]:
    """Every MIL op type the evaluator executes (constants and dequantizers at load)."""
    return sorted(VALUE_INFERENCE_OPS | set(KERNELS) | CONSTANT_OPS | DEQUANTIZING_OPS)


# --- binding runtime values to coremltools' op definitions ----------------------------------


class _Value:
    """A runtime value as an op definition reads an input Var: val, sym_val, shape, rank,
    dtype (the MIL builtin type), sym_type."""

    __slots__ = ("val", "dtype")

    def __init__(self, val, dtype):
        self.val, self.dtype = val, dtype

    @property
    def sym_val(self):
        return self.val

    @property
    def shape(self):
        return tuple(np.shape(self.val))

    @property
    def rank(self):
        return np.ndim(self.val)

    @property
    def sym_type(self):
        from coremltools.converters.mil.mil import types

        return types.tensor(self.dtype, self.shape) if self.rank else self.dtype


class _Bound:
    """The op as its own definition sees it, with runtime values in place of its input Vars.
    Methods of the op's class run bound to this object, so `self.x.val` inside coremltools'
    value_inference reads the value of this call."""

    def __init__(self, op, values: dict):
        self._op, self._input_vars = op, values

    @property
    def _input_types(self):
        return self._op._input_types

    def __getattr__(self, name):
        if name in self._input_vars:
            return self._input_vars[name]
        if name in self._op._input_types:
            return None  # an optional input the op was not given
        if _is_plain_method(type(self._op), name):
            return MethodType(getattr(type(self._op), name), self)
        return getattr(self._op, name)


@lru_cache(maxsize=None)
def _is_plain_method(cls, name: str) -> bool:
    """Whether `name` is a function defined on `cls` (not a static/class method or property)."""
    return inspect.isfunction(inspect.getattr_static(cls, name, None))


# --- the program, compiled to a list of steps ---------------------------------------------


def _numpy_dtype(builtin):
    from coremltools.converters.mil.mil import types

    if builtin is types.str:
        return None
    return np.dtype(types.nptype_from_builtin(builtin))


def _held(dtype: np.dtype | None) -> np.dtype | None:
    """How a value of `dtype` is held: floats as float32, everything else as itself."""
    return np.dtype(np.float32) if dtype is not None and dtype.kind == "f" else dtype


def _store(value, dtype: np.dtype | None):
    """`value` rounded to `dtype` and held as _held(dtype)."""
    if dtype is None:  # strings
        return value
    if dtype == np.float16:
        held = np.asarray(value, dtype=np.float16).astype(np.float32)
    elif dtype.kind == "f":
        held = np.asarray(value, dtype=np.float32)
    else:
        held = np.asarray(value).astype(dtype, copy=False)
    if held.ndim:
        return held
    # scalars as coremltools' op definitions expect them: numpy scalars, Python bools (numpy
    # refuses numpy.bool where it takes a flag, e.g. keepdims)
    return bool(held) if held.dtype.kind == "b" else held[()]


def _root(value):
    """The array that owns `value`'s memory (None for non-arrays)."""
    if not isinstance(value, np.ndarray):
        return None
    while isinstance(value.base, np.ndarray):
        value = value.base
    return value


@dataclass
class _Step:
    op: object
    kernel: Callable
    inputs: dict  # input name -> slot, or tuple of slots
    input_dtypes: dict  # input name -> MIL builtin dtype (or tuple)
    outputs: tuple  # slots
    output_dtypes: tuple  # np dtypes the outputs are rounded to (None: strings)
    output_shapes: tuple  # declared shapes: int per fixed dim, None per flexible one
    rounds: bool
    frees: tuple  # slots whose last use is this op
    donated: frozenset  # input names whose value this op may overwrite (last use, not constant)


class EvaluatorState:
    """Core ML's MLState: the program's states, held between predict calls."""

    def __init__(self, shapes: dict, dtypes: dict):
        from coremltools.converters.mil.mil import types

        self.dtypes = dtypes
        self.builtins = {name: types.numpy_type_to_builtin_type(dtype.type) for name, dtype in dtypes.items()}
        self.values = {name: np.zeros(shape, dtype=_held(dtypes[name])) for name, shape in shapes.items()}

    def store(self, name: str, value, rounded: bool = False) -> np.ndarray:
        """Write state `name` (a copy of `value`, rounded to the state's type unless it is already)."""
        stored = np.asarray(value) if rounded else _store(value, self.dtypes[name])
        if stored.shape != self.values[name].shape:
            raise EvaluationError(f"state {name} has shape {self.values[name].shape}, the update {stored.shape}")
        self.values[name] = np.array(stored, copy=True)
        return self.values[name]


class _Call:
    """One predict call: the state it reads and writes, and which values it may overwrite."""

    def __init__(self, state: EvaluatorState, env: list, roots: dict):
        self.state, self.env, self.roots = state, env, roots
        self.step: _Step | None = None

    def may_overwrite(self, name: str) -> bool:
        if name not in self.step.donated:
            return False
        value = self.env[self.step.inputs[name]]
        root = _root(value)
        return root is not None and value.flags.writeable and self.roots.get(id(root), 0) == 1


class Evaluator:
    """The main function of a MIL program, executable with numpy.

    `predict(inputs, state)` mirrors MLModel.predict(inputs, state=...): inputs by name, the
    outputs by name in their declared dtypes."""

    def __init__(self, program, spec=None, precision: str = "model"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        from coremltools.converters.mil.mil import types

        self.precision = precision
        main = program.functions.get("main")
        if main is None:
            raise BundleError("the Core ML program has no main function")
        self._check_ops(main)
        slots: dict[int, int] = {}

        def slot(var) -> int:
            return slots.setdefault(id(var), len(slots))

        def dtype_of(var):
            declared = _numpy_dtype(var.dtype)
            if declared is None or declared.kind != "f" or precision == "model":
                return declared
            return np.dtype(np.float16 if precision == "fp16" else np.float32)

        self.input_names, self.state_shapes, self.state_dtypes = [], {}, {}
        self._inputs = {}  # name -> (slot, dtype, declared shape)
        for name, var in main.inputs.items():
            if types.is_state(var.sym_type):
                self.state_shapes[name] = tuple(var.shape)
                self.state_dtypes[name] = dtype_of(var)
            else:
                self.input_names.append(name)
                self._inputs[name] = (slot(var), dtype_of(var), var.shape)
        self._ranges = _input_ranges(spec) if spec is not None else {}

        constants: dict[int, object] = {}
        steps: list[_Step] = []
        for op in main.operations:
            if op.op_type in CONSTANT_OPS or op.op_type in DEQUANTIZING_OPS:
                out = op.outputs[0]
                value = out.val if op.op_type in CONSTANT_OPS else op.materialized_val_inference()
                constants[slot(out)] = _readonly(_store(value, dtype_of(out)))
                continue
            inputs, input_dtypes = {}, {}
            for name, var in op.inputs.items():
                if isinstance(var, (list, tuple)):
                    inputs[name] = tuple(slot(v) for v in var)
                    input_dtypes[name] = tuple(self._builtin(dtype_of(v), v) for v in var)
                else:
                    inputs[name] = slot(var)
                    input_dtypes[name] = self._builtin(dtype_of(var), var)
            steps.append(_Step(
                op=op,
                kernel=KERNELS.get(op.op_type, _value_inference),
                inputs=inputs,
                input_dtypes=input_dtypes,
                outputs=tuple(slot(o) for o in op.outputs),
                output_dtypes=tuple(dtype_of(o) for o in op.outputs),
                output_shapes=tuple(tuple(d if isinstance(d, int) else None for d in o.shape) for o in op.outputs),
                rounds=op.op_type not in DATA_MOVEMENT_OPS,
                frees=(),
                donated=frozenset(),
            ))
        self.output_names = [v.name for v in main.outputs]
        self._outputs = {v.name: (slot(v), _numpy_dtype(v.dtype)) for v in main.outputs}
        self._plan_lifetimes(steps, constants)
        self._steps = steps
        self._template = [None] * len(slots)
        for s, value in constants.items():
            self._template[s] = value
        self.declared_precision = _declared_precision(main)

    @staticmethod
    def _builtin(dtype, var):
        from coremltools.converters.mil.mil import types

        return var.dtype if dtype is None else types.numpy_type_to_builtin_type(dtype.type)

    @staticmethod
    def _check_ops(main) -> None:
        known = VALUE_INFERENCE_OPS | set(KERNELS) | CONSTANT_OPS | DEQUANTIZING_OPS
        unknown: dict[str, str] = {}
        for op in main.operations:
            if op.op_type not in known:
                unknown.setdefault(op.op_type, op.name)
            elif op.blocks:
                unknown.setdefault(f"{op.op_type} with nested blocks", op.name)
        if unknown:
            listed = ", ".join(f"{t} (first as op {n!r})" for t, n in sorted(unknown.items()))
            raise UnsupportedOp(
                f"the Core ML program uses MIL ops the Linux evaluator does not implement: {listed}. "
                "Add a kernel for each in mobilekit/runtime/mil_evaluator.py (KERNELS, or VALUE_INFERENCE_OPS "
                "where coremltools' value_inference computes it), or validate the bundle on macOS, where the "
                "real Core ML runtime runs it."
            )

    def _plan_lifetimes(self, steps: list[_Step], constants: dict) -> None:
        """Free each value after its last use, and let an op overwrite an input that dies
        with it (in place, when its memory is not shared at run time)."""
        last_use: dict[int, int] = {}
        for i, step in enumerate(steps):
            for s in _flat(step.inputs.values()):
                last_use[s] = i
        kept = {s for s, _ in self._outputs.values()} | set(constants)
        frees: dict[int, list[int]] = {}
        for s, i in last_use.items():
            if s not in kept:
                frees.setdefault(i, []).append(s)
        for i, step in enumerate(steps):
            step.frees = tuple(frees.get(i, ()))
            used = list(_flat(step.inputs.values()))
            step.donated = frozenset(name for name, s in step.inputs.items()
                                     if isinstance(s, int) and s in step.frees and used.count(s) == 1)

    def make_state(self) -> EvaluatorState:
        """Fresh states, zero-filled (one per sequence, as MLModel.make_state())."""
        return EvaluatorState(self.state_shapes, self.state_dtypes)

    def _prepare_inputs(self, inputs: dict) -> dict:
        missing = set(self.input_names) - set(inputs)
        extra = set(inputs) - set(self.input_names)
        if missing or extra:
            raise ValueError(f"the program takes inputs {self.input_names}; got {sorted(inputs)}")
        prepared = {}
        for name, (s, dtype, shape) in self._inputs.items():
            value = np.asarray(inputs[name])
            if value.ndim != len(shape) or any(
                isinstance(d, int) and d != n for d, n in zip(shape, value.shape)
            ):
                raise ValueError(f"input {name} has shape {value.shape}, the program declares {tuple(shape)}")
            for axis, (low, high) in enumerate(self._ranges.get(name, ())):
                if not low <= value.shape[axis] <= high:
                    raise ValueError(f"input {name} dimension {axis} is {value.shape[axis]}, outside [{low}, {high}]")
            prepared[s] = np.array(_store(value, dtype), copy=True)
        return prepared

    def predict(self, inputs: dict, state: EvaluatorState) -> dict:
        """Outputs by name (declared dtypes) for `inputs`, reading and writing `state`."""
        env = list(self._template)
        roots: dict[int, int] = {}

        def hold(s, value):
            env[s] = value
            root = _root(value)
            if root is not None:
                roots[id(root)] = roots.get(id(root), 0) + 1

        def release(s):
            root = _root(env[s])
            env[s] = None
            if root is not None:
                count = roots[id(root)] - 1
                if count:
                    roots[id(root)] = count
                else:
                    del roots[id(root)]

        for s, value in self._prepare_inputs(inputs).items():
            hold(s, value)
        call = _Call(state, env, roots)
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            for step in self._steps:
                call.step = step
                bound = _Bound(step.op, {
                    name: (tuple(_Value(env[x], d) for x, d in zip(s, step.input_dtypes[name]))
                           if isinstance(s, tuple) else _Value(env[s], step.input_dtypes[name]))
                    for name, s in step.inputs.items()
                })
                try:
                    result = step.kernel(step.op, bound, call)
                except (UnsupportedOp, EvaluationError):
                    raise
                except Exception as e:
                    raise EvaluationError(
                        f"MIL op {step.op.name!r} ({step.op.op_type}) failed: {type(e).__name__}: {e}"
                    ) from e
                results = tuple(result) if len(step.outputs) > 1 else (result,)
                for s, value, dtype, shape in zip(step.outputs, results, step.output_dtypes, step.output_shapes):
                    if step.rounds or dtype is None or np.ndim(value) == 0:
                        value = _store(value, dtype)
                    else:  # moved, not computed: already of its type
                        value = np.asarray(value)
                    if dtype is not None:
                        _check_shape(step.op, value, shape)
                    hold(s, value)
                for s in step.frees:
                    release(s)
        return {name: np.asarray(env[s]).astype(dtype) for name, (s, dtype) in self._outputs.items()}


def _flat(items):
    for item in items:
        if isinstance(item, tuple):
            yield from item
        else:
            yield item


def _readonly(value):
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


def _check_shape(op, value, declared: tuple) -> None:
    shape = np.shape(value)
    if len(shape) != len(declared) or any(d is not None and d != n for d, n in zip(declared, shape)):
        raise EvaluationError(
            f"MIL op {op.name!r} ({op.op_type}) produced shape {shape}; the program declares "
            f"{tuple('?' if d is None else d for d in declared)}"
        )


def _input_ranges(spec) -> dict:
    """input name -> [(low, high)] per dimension, from the Model spec's shape ranges."""
    ranges = {}
    for described in spec.description.input:
        array = described.type.multiArrayType
        if array.HasField("shapeRange"):
            ranges[described.name] = [(r.lowerBound, r.upperBound if r.upperBound >= 0 else 2**31)
                                      for r in array.shapeRange.sizeRanges]
    return ranges


def _declared_precision(main) -> str:
    """The program's compute precision: that of its linear algebra (an fp32 program still
    holds fp16 states and the cache slices cast to them)."""
    from coremltools.converters.mil.mil import types

    dtypes = {out.dtype for op in main.operations if op.op_type in MATMUL_OPS for out in op.outputs}
    return "fp16" if types.fp16 in dtypes else "fp32"


def load_evaluator(path: Path, precision: str = "model") -> Evaluator:
    """The evaluator for the saved .mlpackage at `path`."""
    program, spec = load_program(Path(path))
    return Evaluator(program, spec, precision)


__all__ = [
    "DATA_MOVEMENT_OPS",
    "EvaluationError",
    "Evaluator",
    "EvaluatorState",
    "KERNELS",
    "PRECISIONS",
    "UnsupportedOp",
    "VALUE_INFERENCE_OPS",
    "load_evaluator",
    "supported_ops",
]
