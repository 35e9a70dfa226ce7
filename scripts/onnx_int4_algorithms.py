"""ONNX Runtime's MatMulNBits weight-quantization algorithms on an fp32 ONNX bundle, measured as
validation's stage 2 (perplexity and top-1 against the reference, ONNX Runtime) plus a decode
loop. Exploratory (issue 21): README "int4 quality" quotes its numbers for SmolLM2-135M.

    python scripts/onnx_int4_algorithms.py BUNDLE_FP32 default_sym,kquant,gptq_sym [cont]

BUNDLE_FP32: `mobilekit export smollm2-135m --target onnx --quant fp32 --output B`."""
import json, shutil, sys, time
from pathlib import Path
import numpy as np, onnx
from mobilekit import pipeline, recipes, targets, validate
from mobilekit.targets import onnx as tonnx
from onnxruntime.quantization import matmul_nbits_quantizer as mnq

SRC = Path(sys.argv[1])
manifest = json.loads((SRC / "mobilekit.json").read_text())
ctx = pipeline.make_context(recipes.get("smollm2-135m"), pipeline._source_of(manifest), manifest["max_seq_len"])
t0 = time.time(); ref = ctx.reference(lambda m: None); print("reference", time.time() - t0, flush=True)

class Reader:
    """Calibration: mobilekit/data/calibration.txt, chunks of 256 tokens, empty past."""
    def __init__(self, ids, kv):
        self.items = []
        for s in range(0, min(len(ids), 1024), 256):
            chunk = np.array([ids[s:s + 256]], dtype=np.int64)
            T = chunk.shape[1]
            d = {"input_ids": chunk, "attention_mask": np.ones((1, T), np.int64),
                 "position_ids": np.arange(T, dtype=np.int64)[None]}
            for name, shape in kv: d[name] = np.zeros(shape, np.float32)
            self.items.append(d)
        self.i = 0
    def get_next(self):
        if self.i >= len(self.items): return None
        self.i += 1; return self.items[self.i - 1]
    def rewind(self): self.i = 0
    def __iter__(self):
        return iter(self.items)

def variant(name, fn):
    out = SRC.parent / f"{SRC.name}-{name}"; shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(SRC, out, ignore=shutil.ignore_patterns("model.onnx*"))
    model = onnx.load(str(SRC / "model.onnx"))
    t = time.time(); model, facts = fn(model); qt = time.time() - t
    tonnx._save(model, out / "model.onnx")
    m = dict(manifest); m["quant"] = "int4"
    (out / "mobilekit.json").write_text(json.dumps(m))
    size = sum(p.stat().st_size for p in out.glob("model.onnx*")) / 1e6
    sess = targets.of_bundle(out, m).open_session(out, m)
    met = validate.measure(sess, ref, continuations="cont" in sys.argv)
    print(f"{name:28s} {size:7.1f} MB  q {qt:5.1f}s  ppl {met.ppl_increase_pct:+6.1f}%  top1 {met.top1_agreement:.1%}  "
          f"greedy {met.greedy_match:.2f} degen {getattr(met,'degenerate_continuations',None)} {facts}", flush=True)
    # decode speed
    import onnxruntime as ort
    s = ort.InferenceSession(str(out / "model.onnx"))
    ins = s.get_inputs()
    kvs = [(i.name, [1, i.shape[1], 0, i.shape[3]]) for i in ins if i.name.startswith("past")]
    past = {n: np.zeros(sh, np.float32) for n, sh in kvs}
    outs = [o.name for o in s.get_outputs()]
    t = time.time(); n = 40
    for p in range(n):
        feed = {"input_ids": np.array([[5]], np.int64), "attention_mask": np.ones((1, p + 1), np.int64),
                "position_ids": np.array([[p]], np.int64), **past}
        r = s.run(None, feed)
        past = {k: v for k, v in zip([n_.replace("present", "past_key_values") for n_ in outs[1:]], r[1:])}
    print(f"   decode {n / (time.time() - t):.1f} tok/s", flush=True)
    shutil.rmtree(out, ignore_errors=True)

def sym_default(model):
    return tonnx.quantize_model(model, "int4")

def with_algo(cfg_fn, symmetric):
    def run(model):
        tied = tonnx._untie_lm_head(model)
        q = mnq.MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=symmetric, accuracy_level=4,
                                     op_types_to_quantize=("MatMul",), algo_config=cfg_fn(model))
        q.process()
        model = q.model.model if hasattr(q.model, "model") else q.model
        shared = tonnx._share_embedding(model, tied, 4, 32) if tied else False
        return model, {"shared": shared, "zp": any(len(n.input) > 3 for n in model.graph.node if n.op_type == "MatMulNBits")}
    return run

if __name__ == "__main__":
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(SRC / "tokenizer.json"))
    cal = (Path(validate.__file__).parent / "data" / "calibration.txt").read_text()
    ids = tk.encode(cal).ids
    print("calibration tokens", len(ids))
    sess0 = __import__("onnxruntime").InferenceSession(str(SRC / "model.onnx"))
    kv = [(i.name, [1, i.shape[1], 0, i.shape[3]]) for i in sess0.get_inputs() if i.name.startswith("past")]
    del sess0
    which = sys.argv[2].split(",")
    V = {
        "default_sym": sym_default,
        "kquant": with_algo(lambda m: mnq.KQuantWeightOnlyQuantConfig(), False),
        "rtn_sym": with_algo(lambda m: mnq.RTNWeightOnlyQuantConfig(), True),
        "gptq_sym": with_algo(lambda m: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(ids, kv), percdamp=0.01, block_size=128, actorder=False, mse=False), True),
        "gptq_sym_act": with_algo(lambda m: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(ids, kv), percdamp=0.01, block_size=128, actorder=True, mse=True), True),
        "gptq_asym": with_algo(lambda m: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(ids, kv), percdamp=0.01, block_size=128, actorder=False, mse=False), False),
    }
    for w in which: variant(w, V[w])
