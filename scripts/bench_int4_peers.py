"""Side-by-side int4 benchmark: mobilekit bundles vs optimum-executorch and the ORT GenAI
model builder, all scored against transformers eager fp32 on the same text in one run.

  .venv/bin/python scripts/bench_int4_peers.py /tmp/q/et_int4 --onnx-bundle /tmp/peers/mk_onnx_int4 \
      --out /tmp/peers/bench-int4-peers.md

Peers get their own venvs under --peers (created here, reused on later runs), so their
pins (optimum-executorch 1.1.0 wants transformers 5.0.0rc1) never touch the main venv.
A peer that fails to install or export is reported with its error and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
os.environ.setdefault("MOBILEKIT_THREADS", str(THREADS))  # read by mobilekit's sessions
os.environ["HF_HUB_OFFLINE"] = "1"  # the checkpoint folder is local; nothing may hit the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREFILL, EVAL_TOKENS, NEW_TOKENS = 16, 222, 128
PROMPTS = {"chat": "Write a short story about a robot learning to paint.",
           "plain": "The old clockmaker opened his shop early that morning, and"}
# Pip would otherwise pull a CUDA torch from PyPI; the local CPU wheel satisfies every peer.
TORCH_PIN = "torch==2.13.0+cpu"
PEERS = {
    "optimum": ["optimum-executorch==1.1.0", TORCH_PIN],
    "genai": ["onnxruntime-genai==0.18.0", "onnx", "onnx-ir", "transformers", TORCH_PIN],
}


def log(msg: str) -> None:
    print(msg, flush=True)


def run_timed(cmd: list[str], logfile: Path) -> float:
    """Run cmd (niced: the machine is shared), its output to logfile; seconds taken.
    Raises with the log's tail so the failure can be reported verbatim."""
    start = time.time()
    with open(logfile, "w") as f:
        rc = subprocess.call(["nice", "-n", "19", *cmd], stdout=f, stderr=subprocess.STDOUT)
    if rc:
        tail = "".join(logfile.read_text(errors="replace").splitlines(True)[-25:])
        raise RuntimeError(f"`{' '.join(cmd)}` exited {rc}; last lines of {logfile}:\n{tail}")
    return time.time() - start


def ensure_venv(peers: Path, name: str) -> tuple[Path, dict]:
    """The peer's venv (created and pip-installed on first use) and its install timing."""
    venv, stamp = peers / name, peers / f"{name}.installed.json"
    if stamp.exists():
        return venv, {**json.loads(stamp.read_text()), "reused": True}
    peers.mkdir(parents=True, exist_ok=True)
    (peers / ".gitignore").write_text("*\n")  # keep the venvs out of git
    secs = run_timed([sys.executable, "-m", "venv", "--clear", str(venv)], peers / f"{name}.venv.log")
    secs += run_timed([str(venv / "bin/pip"), "install", *PEERS[name]], peers / f"{name}.pip.log")
    info = {"install_s": round(secs, 1), "packages": PEERS[name]}
    stamp.write_text(json.dumps(info))
    return venv, info


def build_peer(name: str, peers: Path, hf_dir: Path, out: Path) -> tuple[Path, dict]:
    """Install the peer and export the int4 artefact into `out` (reused when present)."""
    venv, info = ensure_venv(peers, name)
    stamp = out / "export.json"
    if stamp.exists():
        return out, {**info, **json.loads(stamp.read_text()), "export_reused": True}
    out.mkdir(parents=True, exist_ok=True)
    if name == "optimum":
        cmd = [str(venv / "bin/optimum-cli"), "export", "executorch", "--model", str(hf_dir),
               "--task", "text-generation", "--recipe", "xnnpack", "--use_custom_sdpa",
               "--use_custom_kv_cache", "--qlinear", "8da4w", "--qembedding", "8w", "--output_dir", str(out)]
    else:
        # -i, not -m: -m names a hub model, -i a local HF folder (per the builder's source;
        # its --help crashes in 0.18.0 on a '%' in a help string).
        cmd = [str(venv / "bin/python"), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
               "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(out / "hf_cache")]
    secs = run_timed(cmd, out.parent / f"{name}.export.log")
    stamp.write_text(json.dumps({"export_s": round(secs, 1), "export_cmd": " ".join(cmd)}))
    return out, {**info, "export_s": round(secs, 1), "export_cmd": " ".join(cmd)}


def ensure_mk_onnx(bundle: Path) -> dict:
    """mobilekit's own ONNX int4 bundle, exported on first use (no validation: this script
    is the validation)."""
    stamp = bundle.parent / f"{bundle.name}.export.json"
    if (bundle / "mobilekit.json").exists():
        return {**json.loads(stamp.read_text()), "export_reused": True} if stamp.exists() else {}
    cmd = [str(REPO / ".venv/bin/mobilekit"), "export", "smollm2-135m", "--target", "onnx", "--quant", "int4",
           "--output", str(bundle), "--no-validate"]
    bundle.parent.mkdir(parents=True, exist_ok=True)
    secs = run_timed(cmd, bundle.parent / f"{bundle.name}.export.log")
    stamp.write_text(json.dumps({"export_s": round(secs, 1), "export_cmd": " ".join(cmd)}))
    return json.loads(stamp.read_text())


# ---------------------------------------------------------------- sessions ------------
# Every artefact is driven through mobilekit's Session interface (step(ids) -> logits of
# the last id, cache advancing), so one measuring routine serves them all.

def eager_session(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM
    from mobilekit.runtime import Session

    class Eager(Session):
        runtime = "transformers eager fp32"

        def __init__(self):
            super().__init__(4096)
            self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()

        def reset(self):
            super().reset()
            self.cache = None

        def _run(self, tokens):
            with torch.no_grad():
                # transformers 5.24 renamed past_key_values to cache
                out = self.model(torch.tensor([tokens]), cache=self.cache, use_cache=True)
            self.cache = out.cache
            return out.logits[0, -1].float().numpy()

    torch.set_num_threads(THREADS)
    return Eager()


def peer_pte_session(pte: Path):
    """optimum's .pte: forward(tokens, input_pos); its logits may be [1,V] or [1,T,V], and
    input_pos may be a start position [1] or one position per token [T]."""
    import torch
    from executorch.runtime import Runtime
    from mobilekit.runtime.executorch import ExecuTorchSession

    program = Runtime.get().load_program(pte)
    max_len = int(program.load_method("get_max_seq_len").execute([])[0]) \
        if "get_max_seq_len" in program.method_names else 2048

    class PeerPte(ExecuTorchSession):
        def _run(self, tokens):
            n_pos = self._method.metadata.input_tensor_meta(1).sizes()[0]
            pos = list(range(self.position, self.position + len(tokens))) if n_pos > 1 else [self.position]
            (logits,) = self._method.execute([torch.tensor([tokens]), torch.tensor(pos)])
            logits = logits.float().numpy()
            return logits[0, -1] if logits.ndim == 3 else logits[0]

    return PeerPte(pte, max_len)


def genai_session(folder: Path):
    """An onnxruntime-genai model driven token by token (append_tokens + get_logits)."""
    import onnxruntime_genai as og
    from mobilekit.runtime import Session

    class GenAI(Session):
        runtime = "onnxruntime-genai"

        def __init__(self):
            cfg = json.loads((folder / "genai_config.json").read_text())["model"]
            super().__init__(cfg["context_length"])
            self.vocab = cfg["vocab_size"]
            config = og.Config(str(folder))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": THREADS}}}}))
            self.model = og.Model(config)
            self.reset()

        def reset(self):
            super().reset()
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=self.max_seq_len)
            self.generator = og.Generator(self.model, params)

        def _run(self, tokens):
            self.generator.append_tokens(tokens)
            return np.asarray(self.generator.get_logits()).reshape(-1, self.vocab)[-1]

    return GenAI()


def mobilekit_session(bundle: Path):
    from mobilekit import targets

    manifest = json.loads((bundle / "mobilekit.json").read_text())
    return targets.of_bundle(bundle, manifest).open_session(bundle, manifest)


# --------------------------------------------------------------- measuring ------------

def log_softmax_nll(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return logz - logits[np.arange(len(targets)), targets]


def teacher_forced(session, ids: list[int]) -> np.ndarray:
    """Logits predicting ids[PREFILL:]: one prefill of PREFILL tokens, then one at a time."""
    session.reset()
    rows = [session.step(ids[:PREFILL])]
    rows += [session.step([t]) for t in ids[PREFILL:-1]]
    return np.stack(rows)


def timed_greedy(session, prompt: list[int], stops: set[int]) -> tuple[list[int], float, int]:
    """Greedy NEW_TOKENS after `prompt`; (ids, decode seconds, decode steps). Only the
    single-token steps after the prompt's prefill are timed."""
    session.reset()
    logits, out, secs = session.step(prompt), [], 0.0
    for _ in range(NEW_TOKENS):
        out.append(int(np.argmax(logits)))
        if out[-1] in stops or len(out) == NEW_TOKENS:
            break
        start = time.perf_counter()
        logits = session.step([out[-1]])
        secs += time.perf_counter() - start
    return out, secs, len(out) - 1


def measure(session, ids, prompts, tok, stops) -> dict:
    from mobilekit.validate import degeneration

    logits = teacher_forced(session, ids)
    result = {"nll": log_softmax_nll(logits, ids[PREFILL:]), "argmax": logits.argmax(-1), "continuations": {}}
    secs = steps = 0
    for name, prompt in prompts.items():
        out, s, n = timed_greedy(session, prompt, stops)
        secs, steps = secs + s, steps + n
        kept = [t for t in out if t not in stops]
        text = tok.decode(kept, skip_special_tokens=True)
        result["continuations"][name] = {"text": text, **degeneration(kept, text)}
        log(f"    {name}: {text[:200]!r}")
    result["decode_tok_s"] = round(steps / secs, 1) if secs else None
    return result


def model_mb(path: Path) -> float:
    """Size of the model file(s): weights and graphs, not tokenizer/config files."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and "hf_cache" not in f.parts
                                           and f.suffix in (".pte", ".onnx", ".data", ".safetensors")]
    return round(sum(f.stat().st_size for f in files) / 1e6, 1)


# ----------------------------------------------------------------- report -------------

def table(rows: list[dict], ref_ppl: float) -> str:
    lines = [f"Reference: transformers eager fp32, perplexity {ref_ppl:.3f} over {EVAL_TOKENS - PREFILL} "
             f"teacher-forced predictions (first {EVAL_TOKENS} tokens of mobilekit/data/eval.txt, "
             f"{PREFILL}-token prefill). Decode tok/s: single-token greedy steps after the prompt, "
             f"both prompts pooled, {THREADS} threads.", "",
             "| artefact | size MB | ppl Δ% | top-1 | degenerate (chat/plain) | decode tok/s |",
             "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | — | — | — | — | — (failed: {r['error'].splitlines()[0][:80]}) |")
            continue
        c = r["continuations"]
        deg = "/".join("yes" if c[k]["degenerate"] else "no" for k in PROMPTS)
        lines.append(f"| {r['name']} | {r['size_mb']} | {r['ppl_delta_pct']:+.2f} | {r['top1_pct']:.1f}% "
                     f"| {deg} | {r['decode_tok_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", type=Path, help="mobilekit bundle folders (mobilekit.json inside)")
    ap.add_argument("--onnx-bundle", type=Path, help="mobilekit ONNX int4 bundle; exported here if missing")
    ap.add_argument("--peers", type=Path, default=REPO / ".peers", help="peer venvs (reused)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/peers/artefacts"), help="peer exports (reused)")
    ap.add_argument("--out", type=Path, default=Path("bench-int4-peers.md"))
    ap.add_argument("--setup-only", action="store_true", help="only create the peer venvs and the ONNX bundle")
    args = ap.parse_args()
    if args.setup_only:  # lets the slow pip installs run ahead of the first benchmark
        for peer in PEERS:
            log(f"{peer}: {ensure_venv(args.peers, peer)[1]}")
        if args.onnx_bundle:
            log(f"{args.onnx_bundle}: {ensure_mk_onnx(args.onnx_bundle)}")
        return

    from transformers import AutoTokenizer
    from mobilekit import checkpoint
    from mobilekit.targets.executorch import _load_custom_ops

    _load_custom_ops()  # custom_sdpa / update_cache / quantized kernels, for every .pte
    hf_dir = checkpoint.resolve("embedded").path
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok.encode((REPO / "mobilekit/data/eval.txt").read_text(), add_special_tokens=False)[:EVAL_TOKENS]
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPTS["chat"]}], tokenize=False,
                                   add_generation_prompt=True)
    prompts = {"chat": tok.encode(chat, add_special_tokens=False),
               "plain": tok.encode(PROMPTS["plain"], add_special_tokens=False)}
    stops = {tok.eos_token_id, 2}
    log(f"checkpoint {hf_dir}; {len(ids)} eval tokens; prompts {[len(p) for p in prompts.values()]} tokens")

    # (name, opener, model path, build info); a failed build keeps its error instead.
    artefacts, builds = [("reference (HF eager fp32)", lambda: eager_session(hf_dir), hf_dir, {})], {}
    bundles = list(args.bundles)
    if args.onnx_bundle:
        try:
            builds["mobilekit onnx int4"] = ensure_mk_onnx(args.onnx_bundle)
            bundles.append(args.onnx_bundle)
        except Exception as e:  # noqa: BLE001
            builds["mobilekit onnx int4"] = {"error": str(e)}
    for b in bundles:
        m = json.loads((b / "mobilekit.json").read_text())
        artefacts.append((f"mobilekit {m['target']} {m['quant']} ({b})", lambda b=b: mobilekit_session(b), b, {}))
    for peer, label, opener, model in (
            ("optimum", "optimum-executorch 1.1.0 8da4w+8w (.pte)", peer_pte_session, "model.pte"),
            ("genai", "ORT GenAI builder int4 (onnx)", genai_session, "")):
        log(f"building {peer} ...")
        try:
            out, info = build_peer(peer, args.peers, hf_dir, args.work / peer)
            builds[label] = info
            artefacts.append((label, lambda o=out / model, f=opener: f(o), out / model, info))
        except Exception as e:  # noqa: BLE001 -- report verbatim, keep benchmarking the rest
            log(f"  {peer} FAILED: {e}")
            builds[label] = {"error": str(e)}
            artefacts.append((label, None, None, {"error": str(e)}))

    rows, ref = [], None
    for name, opener, path, info in artefacts:
        log(f"measuring {name}")
        if opener is None:
            rows.append({"name": name, **info})
            continue
        try:
            r = measure(opener(), ids, prompts, tok, stops)
        except Exception as e:  # noqa: BLE001
            log(f"  FAILED: {type(e).__name__}: {e}")
            rows.append({"name": name, "error": f"{type(e).__name__}: {e}"})
            continue
        ref = ref or r  # the reference is measured first
        ppl = float(np.exp(r["nll"].mean()))
        rows.append({"name": name, "size_mb": model_mb(path), "ppl": round(ppl, 4),
                     "ppl_delta_pct": round((ppl / float(np.exp(ref["nll"].mean())) - 1) * 100, 2),
                     "top1_pct": round(float((r["argmax"] == ref["argmax"]).mean() * 100), 1),
                     "decode_tok_s": r["decode_tok_s"], "continuations": r["continuations"]})
        log(f"  {json.dumps({k: v for k, v in rows[-1].items() if k != 'continuations'})}")

    md = table(rows, float(np.exp(ref["nll"].mean())))
    md += "\n## Builds\n\n" + "".join(f"- {k}: `{json.dumps(v)}`\n" for k, v in builds.items())
    md += "\n## Continuations (first 200 chars)\n\n" + "".join(
        f"- {r['name']} / {k}: {c['text'][:200]!r}\n" for r in rows if "continuations" in r
        for k, c in r["continuations"].items())
    print("\n" + md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "builds": builds, "threads": THREADS,
                                                         "eval_tokens": EVAL_TOKENS, "prefill": PREFILL}, indent=1))


if __name__ == "__main__":
    main()
