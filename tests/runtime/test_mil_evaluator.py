"""The Core ML program evaluator, op by op: small MIL programs built with coremltools'
Builder, run through mobilekit.runtime.mil_evaluator and compared with values computed by
hand (numpy loops and closed forms written here, not coremltools' own op code)."""

import inspect
import math

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mobilekit.runtime import mil_evaluator as me  # noqa: E402
from mobilekit.formats.coreml import MASKED, causal_mask  # noqa: E402


def program(specs: dict, precision: str = "model"):
    """Decorator: the Builder function `fn(**inputs)` as an Evaluator; specs name -> TensorSpec."""

    def build(fn):
        ordered = [specs[name] for name in inspect.signature(fn).parameters]  # the Builder binds by position
        prog = mb.program(input_specs=ordered, opset_version=ct.target.iOS18)(fn)
        return me.Evaluator(prog, precision=precision)

    return build


def run(evaluator, state=None, **inputs):
    outputs = evaluator.predict(inputs, state if state is not None else evaluator.make_state())
    return [outputs[name] for name in evaluator.output_names]


def fp32(*shape):
    return mb.TensorSpec(shape=shape, dtype=types.fp32)


# --- slice_update: the KV cache write ---------------------------------------------------------


def test_slice_update_middle_rows_and_masks():
    @program({"x": fp32(4, 3), "u": fp32(2, 3)})
    def ev(x, u):
        return (
            mb.slice_update(x=x, update=u, begin=[1, 0], end=[3, 3]),
            # end_mask: to the end of axis 0; begin_mask: from the start of axis 1
            mb.slice_update(x=x, update=u, begin=[2, 2], end=[0, 3], end_mask=[True, False],
                            begin_mask=[False, True]),
        )

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    u = -np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    middle, tail = run(ev, x=x, u=u)
    want = x.copy()
    want[1:3, :] = u
    assert np.array_equal(middle, want)
    want = x.copy()
    want[2:4, 0:3] = u
    assert np.array_equal(tail, want)
    assert np.array_equal(x, np.arange(12, dtype=np.float32).reshape(4, 3))  # the caller's array untouched


def test_slice_update_stride_negative_begin_and_squeeze():
    @program({"x": fp32(2, 6), "u": fp32(2, 3), "row": fp32(6)})
    def ev(x, u, row):
        return (
            mb.slice_update(x=x, update=u, begin=[0, 0], end=[2, 6], stride=[1, 2]),  # columns 0, 2, 4
            mb.slice_update(x=x, update=row, begin=[-1, 0], end=[0, 6], squeeze_mask=[True, False]),  # last row
        )

    x = np.zeros((2, 6), dtype=np.float32)
    u = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    row = np.arange(6, dtype=np.float32) + 10
    strided, last = run(ev, x=x, u=u, row=row)
    assert np.array_equal(strided, [[1, 0, 2, 0, 3, 0], [4, 0, 5, 0, 6, 0]])
    assert np.array_equal(last, [[0] * 6, list(range(10, 16))])


def test_slice_update_never_overwrites_a_value_still_in_use():
    """In place only where x dies with the op and nothing else shares its memory: here x is
    read again after the update, and a slice of y (a view) is updated while y lives on."""

    @program({"x": fp32(3), "y": fp32(2, 3), "u": fp32(1)})
    def ev(x, u, y):
        x1 = mb.add(x=x, y=0.0)
        updated = mb.slice_update(x=x1, update=u, begin=[0], end=[1])
        later = mb.mul(x=x1, y=1.0)
        y1 = mb.add(x=y, y=0.0)
        row = mb.slice_by_index(x=y1, begin=[0, 0], end=[1, 3], squeeze_mask=[True, False])
        row_updated = mb.slice_update(x=row, update=u, begin=[1], end=[2])
        return updated, later, row_updated, mb.mul(x=y1, y=1.0)

    x = np.array([1, 2, 3], dtype=np.float32)
    y = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    updated, later, row_updated, y_after = run(ev, x=x, u=np.array([9], dtype=np.float32), y=y)
    assert np.array_equal(updated, [9, 2, 3]) and np.array_equal(later, [1, 2, 3])
    assert np.array_equal(row_updated, [1, 9, 3]) and np.array_equal(y_after, y)


def test_slice_update_of_the_wrong_size_is_an_error():
    int32 = {"begin": mb.TensorSpec(shape=(1,), dtype=types.int32), "end": mb.TensorSpec(shape=(1,), dtype=types.int32)}

    @program({"x": fp32(4), "u": fp32(3), **int32})
    def ev(x, u, begin, end):
        # begin/end known only at run time: the converter cannot check the update's size
        return mb.slice_update(x=x, update=u, begin=begin, end=end)

    (ok,) = run(ev, x=np.zeros(4, np.float32), u=np.ones(3, np.float32), begin=np.array([1], np.int32),
                end=np.array([4], np.int32))
    assert ok.tolist() == [0, 1, 1, 1]
    with pytest.raises(me.EvaluationError, match="slice_update"):
        run(ev, x=np.zeros(4, np.float32), u=np.ones(3, np.float32), begin=np.array([1], np.int32),
            end=np.array([3], np.int32))


# --- gather ---------------------------------------------------------------------------------


def test_gather_rows_columns_negative_and_scalar_indices():
    @program({"table": fp32(4, 3), "ids": mb.TensorSpec(shape=(1, 2), dtype=types.int32)})
    def ev(table, ids):
        return (
            mb.gather(x=table, indices=ids, axis=0),  # embedding lookup [1, 2, 3]
            mb.gather(x=table, indices=[-1, 0], axis=1),  # negative index counts from the end
            mb.gather(x=table, indices=2, axis=0),  # scalar index drops the axis
            mb.gather(x=table, indices=mb.cast(x=ids, dtype="uint16"), axis=0),  # what coremltools emits
        )

    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows, columns, row2, rows16 = run(ev, table=table, ids=np.array([[3, 1]], dtype=np.int32))
    assert rows.shape == (1, 2, 3) and np.array_equal(rows[0], [[9, 10, 11], [3, 4, 5]])
    assert np.array_equal(columns, [[2, 0], [5, 3], [8, 6], [11, 9]])
    assert np.array_equal(row2, [6, 7, 8])
    assert np.array_equal(rows16, rows)


def test_gather_out_of_range_is_an_error_naming_the_op():
    @program({"table": fp32(4, 3), "ids": mb.TensorSpec(shape=(2,), dtype=types.int32)})
    def ev(table, ids):
        return mb.gather(x=table, indices=ids, axis=0, name="embedding_lookup")

    with pytest.raises(me.EvaluationError, match="'embedding_lookup' \\(gather\\)"):
        run(ev, table=np.zeros((4, 3), np.float32), ids=np.array([1, 4], dtype=np.int32))


# --- masks and attention ------------------------------------------------------------------------


def _attention_by_hand(q, k, v, mask):
    """softmax(q.k / sqrt(d) + mask) v, one query row at a time."""
    out = np.zeros_like(q)
    for h in range(q.shape[1]):
        for i in range(q.shape[2]):
            scores = [float(q[0, h, i] @ k[0, h, j]) / math.sqrt(q.shape[-1]) + float(mask[0, 0, i, j])
                      for j in range(k.shape[2])]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            out[0, h, i] = sum(w / total * v[0, h, j] for j, w in enumerate(weights))
    return out


def test_causal_mask_of_a_chunk_after_a_past():
    mask = causal_mask(3, 5)  # three new tokens at positions 2, 3, 4
    assert mask.shape == (1, 1, 3, 5) and mask.dtype == np.float16
    assert np.array_equal(mask[0, 0] == 0, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert set(np.unique(mask)) == {0, MASKED}


@pytest.mark.parametrize("new, end", [(4, 4), (1, 6), (3, 6)])  # prefill, one decode step, a chunk after a past
def test_sdpa_with_a_causal_mask(new, end):
    @program({"q": fp32(1, 2, new, 4), "k": fp32(1, 2, end, 4), "v": fp32(1, 2, end, 4),
              "mask": mb.TensorSpec(shape=(1, 1, new, end), dtype=types.fp16)})
    def ev(q, k, v, mask):
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=mb.cast(x=mask, dtype="fp32"))

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 4)).astype(np.float32) for n in (new, end, end))
    mask = causal_mask(new, end)
    (got,) = run(ev, q=q, k=k, v=v, mask=mask)
    want = _attention_by_hand(q, k, v, mask)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the last query sees every key; the first sees only the past and itself
    first_only_own = _attention_by_hand(q[:, :, :1], k[:, :, : end - new + 1], v[:, :, : end - new + 1],
                                        np.zeros((1, 1, 1, end - new + 1), np.float32))
    np.testing.assert_allclose(got[:, :, :1], first_only_own, atol=1e-5)


def test_fp16_sdpa_rounds_its_output_to_fp16():
    spec = {name: mb.TensorSpec(shape=(1, 1, 2, 4), dtype=types.fp16) for name in ("q", "k", "v")}

    @program({**spec, "mask": mb.TensorSpec(shape=(1, 1, 2, 2), dtype=types.fp16)})
    def ev(q, k, v, mask):
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=mask)

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 2, 4)).astype(np.float16) for _ in range(3))
    mask = causal_mask(2, 2)
    (got,) = run(ev, q=q, k=k, v=v, mask=mask)
    assert got.dtype == np.float16
    want = _attention_by_hand(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), mask)
    # computed in fp32 and rounded once: within half an fp16 step (plus fp32 noise) of the exact value
    half_step = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32) / 2
    assert np.all(np.abs(got.astype(np.float32) - want) <= half_step + 1e-6)


def test_sliding_window_mask_as_the_converted_graph_builds_it():
    """key - query <= -window -> masked, else the causal mask: what the Gemma graphs compute
    with sub / less_equal / select before softmax."""

    @program({"keys": mb.TensorSpec(shape=(5,), dtype=types.int32), "queries": mb.TensorSpec(shape=(2, 1), dtype=types.int32),
              "causal": fp32(2, 5), "scores": fp32(2, 5)})
    def ev(keys, queries, causal, scores):
        too_far = mb.less_equal(x=mb.sub(x=keys, y=queries), y=-2)
        mask = mb.select(cond=too_far, a=np.float32(MASKED), b=causal)
        return mask, mb.softmax(x=mb.add(x=scores, y=mask), axis=-1)

    causal = causal_mask(2, 5)[0, 0].astype(np.float32)  # queries at positions 3 and 4
    mask, probs = run(ev, keys=np.arange(5, dtype=np.int32), queries=np.array([[3], [4]], dtype=np.int32),
                      causal=causal, scores=np.zeros((2, 5), np.float32))
    attend = mask == 0
    assert np.array_equal(attend, [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])  # window 2: itself and one back
    np.testing.assert_allclose(probs, attend / 2.0, atol=1e-7)


# --- states -----------------------------------------------------------------------------------


def test_states_persist_between_calls_and_reset_with_make_state():
    @program({"x": mb.TensorSpec(shape=(1, 2), dtype=types.fp16),
              "cache": mb.StateTensorSpec(shape=(3, 2), dtype=types.fp16)})
    def ev(x, cache):
        old = mb.read_state(input=cache)
        # shift the rows up and append x: a rolling cache
        new = mb.concat(values=[mb.slice_by_index(x=old, begin=[1, 0], end=[3, 2]), x], axis=0)
        mb.coreml_update_state(state=cache, value=new)
        return mb.reduce_sum(x=old, axes=[0])

    state = ev.make_state()
    sums = [run(ev, state, x=np.array([[i, 10 * i]], np.float16))[0] for i in (1, 2, 3, 4)]
    assert [s.tolist() for s in sums] == [[0, 0], [1, 10], [3, 30], [6, 60]]  # each call sees the previous writes
    assert np.array_equal(state.values["cache"], [[2, 20], [3, 30], [4, 40]])
    assert run(ev, ev.make_state(), x=np.zeros((1, 2), np.float16))[0].tolist() == [0, 0]


def test_a_state_read_but_not_updated_keeps_its_value():
    @program({"x": fp32(2), "cache": mb.StateTensorSpec(shape=(2,), dtype=types.fp16)})
    def ev(x, cache):
        scratch = mb.slice_update(x=mb.read_state(input=cache), update=mb.cast(x=x, dtype="fp16"), begin=[0], end=[2])
        return mb.cast(x=scratch, dtype="fp32")

    state = ev.make_state()
    (out,) = run(ev, state, x=np.array([1.5, 2.5], np.float32))
    assert np.array_equal(out, [1.5, 2.5]) and np.array_equal(state.values["cache"], [0, 0])


def test_states_round_to_fp16_in_an_fp32_program():
    @program({"x": fp32(1), "cache": mb.StateTensorSpec(shape=(1,), dtype=types.fp16)})
    def ev(x, cache):
        before = mb.cast(x=mb.read_state(input=cache), dtype="fp32")
        mb.coreml_update_state(state=cache, value=mb.cast(x=x, dtype="fp16"))
        return before

    state = ev.make_state()
    run(ev, state, x=np.array([1 / 3], np.float32))
    (out,) = run(ev, state, x=np.array([0.0], np.float32))
    assert out[0] == np.float32(np.float16(1 / 3)) != np.float32(1 / 3)
    assert ev.declared_precision == "fp32"


# --- precision ---------------------------------------------------------------------------------


def test_fp16_program_rounds_after_every_op_unless_widened():
    def specs():
        return {name: mb.TensorSpec(shape=(2,), dtype=types.fp16) for name in ("a", "b")}

    def body(a, b):
        return mb.sub(x=mb.add(x=a, y=b), y=a)  # (a + b) - a

    a, b = np.array([2048, 1], np.float16), np.array([1, 1], np.float16)
    model = program(specs())(body)
    wide = program(specs(), precision="fp32")(body)
    # 2048 + 1 is 2049, not representable in fp16 (spacing 2 there): rounds to 2048
    assert run(model, a=a, b=b)[0].tolist() == [0, 1]
    assert run(wide, a=a, b=b)[0].tolist() == [1, 1]


def test_fp16_overflow_is_inf_as_on_device():
    half = mb.TensorSpec(shape=(1,), dtype=types.fp16)

    @program({"x": half})
    def ev(x):
        return mb.mul(x=x, y=np.float16(2.0))

    assert np.isinf(run(ev, x=np.array([40000], np.float16))[0][0])


def test_precision_must_be_known():
    prog = mb.program(input_specs=[fp32(1)], opset_version=ct.target.iOS18)(lambda x: mb.add(x=x, y=1.0))
    with pytest.raises(ValueError, match="precision must be one of"):
        me.Evaluator(prog, precision="bf16")


# --- everything else the conversions emit, against closed forms ------------------------------


def test_linear_matmul_and_the_norm_ops():
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    b = np.array([1, 0, -1, 2], np.float32)

    @program({"x": fp32(2, 3)})
    def ev(x):
        return (
            mb.linear(x=x, weight=w, bias=b),
            mb.matmul(x=x, y=w, transpose_y=True),
            mb.layer_norm(x=x, axes=[-1], gamma=np.array([1, 2, 3], np.float32), beta=np.ones(3, np.float32),
                          epsilon=1e-5),
            mb.rsqrt(x=mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True), epsilon=1e-6),
            mb.reduce_max(x=mb.abs(x=x), axes=[-1], keep_dims=False),
        )

    x = np.array([[1, -2, 3], [0.5, 0, -1]], np.float32)
    linear, matmul, norm, rsqrt, amax = run(ev, x=x)
    by_hand = np.array([[sum(x[i, k] * w[j, k] for k in range(3)) for j in range(4)] for i in range(2)])
    np.testing.assert_allclose(linear, by_hand + b, rtol=1e-6)
    np.testing.assert_allclose(matmul, by_hand, rtol=1e-6)
    for i in range(2):
        mean = x[i].mean()
        std = math.sqrt(((x[i] - mean) ** 2).mean() + 1e-5)
        np.testing.assert_allclose(norm[i], (x[i] - mean) / std * [1, 2, 3] + 1, rtol=1e-5)
        assert rsqrt[i, 0] == pytest.approx(1 / math.sqrt((x[i] ** 2).mean() + 1e-6), rel=1e-6)
    assert amax.tolist() == [3, 1]


def test_activations():
    @program({"x": fp32(5)})
    def ev(x):
        return (mb.silu(x=x), mb.gelu(x=x), mb.gelu(x=x, mode="TANH_APPROXIMATION"), mb.tanh(x=x),
                mb.softmax(x=x, axis=-1), mb.sigmoid(x=x), mb.relu(x=x), mb.exp(x=x))

    values = [-3.0, -0.5, 0.0, 0.7, 2.0]
    silu, gelu, gelu_tanh, tanh, softmax, sigmoid, relu, exp = run(ev, x=np.array(values, np.float32))
    total = sum(math.exp(v) for v in values)
    for i, v in enumerate(values):
        assert silu[i] == pytest.approx(v / (1 + math.exp(-v)), abs=1e-6)
        assert gelu[i] == pytest.approx(0.5 * v * (1 + math.erf(v / math.sqrt(2))), abs=1e-6)
        inner = math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)
        assert gelu_tanh[i] == pytest.approx(0.5 * v * (1 + math.tanh(inner)), abs=1e-6)
        assert tanh[i] == pytest.approx(math.tanh(v), abs=1e-6)
        assert softmax[i] == pytest.approx(math.exp(v) / total, abs=1e-6)
        assert sigmoid[i] == pytest.approx(1 / (1 + math.exp(-v)), abs=1e-6)
        assert relu[i] == max(v, 0.0)
        assert exp[i] == pytest.approx(math.exp(v), rel=1e-6)


def test_elementwise_and_comparisons():
    @program({"x": fp32(4), "y": fp32(4)})
    def ev(x, y):
        return (mb.add(x=x, y=y), mb.sub(x=x, y=y), mb.mul(x=x, y=y), mb.real_div(x=x, y=y),
                mb.pow(x=x, y=2.0), mb.maximum(x=x, y=y), mb.minimum(x=x, y=y), mb.sqrt(x=mb.abs(x=x)),
                mb.equal(x=x, y=y), mb.not_equal(x=x, y=y), mb.less(x=x, y=y), mb.less_equal(x=x, y=y),
                mb.greater(x=x, y=y), mb.greater_equal(x=x, y=y), mb.clip(x=x, alpha=-1.0, beta=1.0),
                mb.floor_div(x=x, y=y), mb.sin(x=x), mb.cos(x=x))

    x, y = [4.0, -2.0, 3.0, 0.25], [2.0, -2.0, 4.0, -1.0]
    out = run(ev, x=np.array(x, np.float32), y=np.array(y, np.float32))
    want = [
        [a + b for a, b in zip(x, y)], [a - b for a, b in zip(x, y)], [a * b for a, b in zip(x, y)],
        [a / b for a, b in zip(x, y)], [a * a for a in x], [max(a, b) for a, b in zip(x, y)],
        [min(a, b) for a, b in zip(x, y)], [math.sqrt(abs(a)) for a in x],
        [a == b for a, b in zip(x, y)], [a != b for a, b in zip(x, y)], [a < b for a, b in zip(x, y)],
        [a <= b for a, b in zip(x, y)], [a > b for a, b in zip(x, y)], [a >= b for a, b in zip(x, y)],
        [min(max(a, -1), 1) for a in x], [math.floor(a / b) for a, b in zip(x, y)],
        [math.sin(a) for a in x], [math.cos(a) for a in x],
    ]
    for got, expected in zip(out, want):
        np.testing.assert_allclose(got.astype(np.float64), expected, rtol=1e-6)


def test_shape_ops():
    @program({"x": fp32(2, 3), "ids": mb.TensorSpec(shape=(2, 3), dtype=types.int32)})
    def ev(x, ids):
        shape = mb.shape(x=x)
        return (
            shape,
            # iOS 17: a 0 takes the dim of x it lines up with counting from the right (here x's 2)
            mb.reshape(x=x, shape=[1, 0, -1]),
            mb.reshape(x=x, shape=[3, -1]),
            mb.expand_dims(x=x, axes=[0, -1]),
            mb.squeeze(x=mb.expand_dims(x=x, axes=[0]), axes=[0]),
            mb.transpose(x=x, perm=[1, 0]),
            mb.tile(x=x, reps=[2, 1]),
            mb.concat(values=[x, x], axis=1),
            mb.split(x=x, split_sizes=[1, 2], axis=1)[1],
            mb.stack(values=[x, x], axis=0),
            mb.slice_by_index(x=x, begin=[0, 1], end=[2, 3], stride=[1, 1]),
            mb.slice_by_index(x=x, begin=[1, 0], end=[0, 0], end_mask=[False, True], squeeze_mask=[True, False]),
            # stride and squeeze together (coremltools' folding code writes into the stride)
            mb.slice_by_index(x=x, begin=[1, 0], end=[2, 3], stride=[1, 2], squeeze_mask=[True, False]),
            mb.fill_like(ref_tensor=x, value=7.0),
            mb.cast(x=ids, dtype="fp16"),
            mb.cast(x=mb.cast(x=ids, dtype="uint16"), dtype="int32"),
            mb.reduce_sum(x=x, axes=[0], keep_dims=True),
            mb.identity(x=x),
        )

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    (shape, r1, r2, expanded, squeezed, transposed, tiled, concatenated, split, stacked, sliced, row, strided,
     filled, cast16, cast_ids, summed, same) = run(ev, x=x, ids=ids)
    _, _, _, _, _, _, _, _, _, _, _, _, strided_again, *_ = run(ev, x=x, ids=ids)  # the stride const is intact
    assert shape.dtype == np.int32 and shape.tolist() == [2, 3]
    assert r1.shape == (1, 2, 3) and np.array_equal(r1.ravel(), x.ravel())
    assert r2.shape == (3, 2) and np.array_equal(r2.ravel(), x.ravel())
    assert expanded.shape == (1, 2, 3, 1) and np.array_equal(squeezed, x)
    assert np.array_equal(transposed, [[0, 3], [1, 4], [2, 5]])
    assert np.array_equal(tiled, [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]])
    assert np.array_equal(concatenated, [[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5]])
    assert np.array_equal(split, [[1, 2], [4, 5]])
    assert stacked.shape == (2, 2, 3)
    assert np.array_equal(sliced, [[1, 2], [4, 5]]) and np.array_equal(row, [3, 4, 5])
    assert np.array_equal(strided, [3, 5]) and np.array_equal(strided_again, [3, 5])
    assert np.array_equal(filled, np.full((2, 3), 7.0))
    assert cast16.dtype == np.float16 and np.array_equal(cast16, ids)
    assert cast_ids.dtype == np.int32 and np.array_equal(cast_ids, ids)
    assert summed.tolist() == [[3, 5, 7]] and np.array_equal(same, x)


def test_quantized_weight_is_dequantized_by_its_constexpr_op():
    data = np.array([[-8, 7, 1, 0], [3, -3, 2, -1]], dtype=types.np_int4_dtype)
    scale = np.array([[0.5, 0.25], [2.0, 1.0]], np.float16)  # blocks of 2 along the input axis

    @program({"x": mb.TensorSpec(shape=(1, 4), dtype=types.fp16)})
    def ev(x):
        weight = mb.constexpr_blockwise_shift_scale(data=data, scale=scale)
        return mb.linear(x=x, weight=weight)

    weight = np.array([[-8 * 0.5, 7 * 0.5, 1 * 0.25, 0], [3 * 2.0, -3 * 2.0, 2 * 1.0, -1 * 1.0]])
    x = np.array([[1, 2, 3, 4]], np.float16)
    (got,) = run(ev, x=x)
    assert got.dtype == np.float16 and got[0].tolist() == (weight @ x[0].astype(np.float64)).tolist()


# --- what the evaluator refuses ----------------------------------------------------------------


def test_an_unknown_op_is_refused_by_name_before_anything_runs():
    prog = mb.program(input_specs=[fp32(4)], opset_version=ct.target.iOS18)(
        lambda x: mb.add(x=mb.erf(x=x, name="error_function"), y=1.0))
    with pytest.raises(me.UnsupportedOp, match=r"erf \(first as op 'error_function'\).*mil_evaluator.py"):
        me.Evaluator(prog)
    assert "erf" not in me.supported_ops()


def test_inputs_are_checked_against_the_program():
    @program({"x": mb.TensorSpec(shape=(1, 4), dtype=types.fp32)})
    def ev(x):
        return mb.add(x=x, y=1.0)

    with pytest.raises(ValueError, match="takes inputs"):
        ev.predict({"y": np.zeros((1, 4), np.float32)}, ev.make_state())
    with pytest.raises(ValueError, match="has shape"):
        ev.predict({"x": np.zeros((1, 5), np.float32)}, ev.make_state())


def test_every_supported_op_has_a_kernel_or_coremltools_value_inference():
    from coremltools.converters.mil.mil.operation import Operation
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    for op_type in me.VALUE_INFERENCE_OPS:
        newest = SSAOpRegistry.core_ops[op_type][max(SSAOpRegistry.core_ops[op_type])]
        owner = next(c for c in newest.__mro__ if "value_inference" in vars(c))
        assert owner is not Operation, f"{op_type} has no value_inference of its own"
    assert set(me.KERNELS).isdisjoint(me.VALUE_INFERENCE_OPS)
