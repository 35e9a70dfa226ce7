"""Issue 14: every parser of outside data answers bad input with a MobilekitError, never a
traceback. Property-based: each parser gets 300 generated inputs (MOBILEKIT_FUZZ_EXAMPLES
overrides), mostly mutations of valid ones so the parsers are reached deeply. The same
targets run for hours under atheris: fuzz/fuzz_parsers.py."""

import dataclasses
import json
import os
import tomllib
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilekit import bundle, families, recipes
from mobilekit.errors import BundleError, MobilekitError

from .parser_mutations import (dumps, leaves_of, mutated_bytes, mutated_json, mutated_toml,
                               safetensors_files, source_strings)
from .parser_targets import (TARGETS, TOKENIZER_FILES, Workspace, accepts, config_documents, run_config,
                             run_gguf, run_manifest, run_pickle, run_recipe, run_safetensors, run_source,
                             run_tokenizer, run_weights)

# 120 in `make test` (~20 s a family); `make test-nightly` runs 2000.
EXAMPLES = int(os.environ.get("MOBILEKIT_FUZZ_EXAMPLES", "120"))
# CI runs the same examples every time (a red run is then reproducible, never flaky); set
# MOBILEKIT_FUZZ_RANDOM=1 to explore new ones, as fuzz/fuzz_parsers.py does for hours.
DERANDOMIZE = os.environ.get("MOBILEKIT_FUZZ_RANDOM", "") in ("", "0")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True, derandomize=DERANDOMIZE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("parsers"))


class _Seeds:
    """seeds[target] -> {name: bytes}, built once by the workspace (short repr: hypothesis
    prints a failing test's arguments)."""

    def __init__(self, ws):
        self.ws = ws

    def __getitem__(self, name):
        return self.ws.seeds(name)

    def __repr__(self):
        return "seeds"


@pytest.fixture(scope="module")
def seeds(ws):
    return _Seeds(ws)


# --- the seeds, without atheris (so the harness cannot rot) ---------------------------------


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_runs_its_seeds(ws, seeds, name):
    assert seeds[name], f"target {name} has no seeds"
    for seed_name, data in seeds[name].items():
        TARGETS[name].run(data, ws)
        # valid seeds are accepted whole, so mutations of them reach the parser's depths
        assert accepts(name, data, ws) is not seed_name.startswith("refused-"), (name, seed_name)


# --- property-based: mutations of valid inputs ----------------------------------------------


@FUZZ
@given(data=st.data())
def test_recipe_text(ws, seeds, data):
    texts = {name: blob.decode() for name, blob in seeds["recipe"].items()}
    text = texts[data.draw(st.sampled_from(sorted(texts)))]
    run_recipe(data.draw(mutated_toml(text)).encode(), ws)


@FUZZ
@given(data=st.data())
def test_recipe_tables(ws, seeds, data):
    tables = {name: tomllib.loads(blob.decode()) for name, blob in seeds["recipe"].items()}
    table = tables[data.draw(st.sampled_from(sorted(tables)))]
    doc = data.draw(mutated_json(table, keys=sorted(recipes._KNOWN_KEYS), values=leaves_of(*tables.values()),
                                 keep_root=True))
    try:
        recipe = recipes.from_dict("fuzz", doc)
        if recipe.config:
            recipe.spec()
    except MobilekitError:
        pass


@FUZZ
@given(data=st.data())
def test_manifest(ws, seeds, data):
    docs = {name: json.loads(blob) for name, blob in seeds["manifest"].items()}
    doc = docs[data.draw(st.sampled_from(sorted(docs)))]
    blob = dumps(data.draw(mutated_json(doc, keys=sorted({k for d in docs.values() for k in d}),
                                        values=leaves_of(*docs.values()))))
    if data.draw(st.integers(0, 7)) == 0:
        blob = data.draw(mutated_bytes(blob, max_ops=2))
    run_manifest(blob, ws)


CONFIGS = config_documents()
CONFIG_KEYS = sorted({k for doc in CONFIGS.values() for k in doc} | {"quantization_config", "rope_scaling",
                                                                      "rope_parameters", "layer_types"})
CONFIG_VALUES = leaves_of(*CONFIGS.values())


def _family_of(doc: dict) -> str:
    return families.for_architecture(doc.get("architectures"), doc.get("model_type")).name


@pytest.mark.parametrize("family", families.names())
@FUZZ
@given(data=st.data())
def test_config(ws, family, data):
    docs = {name: doc for name, doc in CONFIGS.items() if _family_of(doc) == family}
    doc = docs[data.draw(st.sampled_from(sorted(docs)))]
    blob = dumps(data.draw(mutated_json(doc, keys=CONFIG_KEYS, values=CONFIG_VALUES)))
    if data.draw(st.integers(0, 9)) == 0:
        blob = data.draw(mutated_bytes(blob, max_ops=2))
    run_config(blob, ws)


SAFETENSORS_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                      "U16", "U32", "U64", "F8_E8M0", "F4", "C64", "f32", ""]


@FUZZ
@given(data=st.data())
def test_safetensors_header(ws, seeds, data):
    seed = seeds["safetensors"]["micro-llama.safetensors"]
    run_safetensors(data.draw(safetensors_files(seed, SAFETENSORS_DTYPES)), ws)


@FUZZ
@given(data=st.data())
def test_weights_against_config(ws, seeds, data):
    seed = seeds["weights"]["micro-llama.safetensors"]
    run_weights(data.draw(safetensors_files(seed, SAFETENSORS_DTYPES)), ws)


@FUZZ
@given(data=st.data())
def test_pickled_weights(ws, seeds, data):
    blobs = seeds["pickle"]
    seed = blobs[data.draw(st.sampled_from(sorted(blobs)))]
    run_pickle(data.draw(mutated_bytes(seed)), ws)


@FUZZ
@given(data=st.data())
def test_gguf_header(ws, seeds, data):
    seed = seeds["gguf"]["llama.gguf"]
    run_gguf(data.draw(mutated_bytes(seed, hot=len(seed) - 320)), ws)


@FUZZ
@given(data=st.data())
def test_tokenizer_files(ws, seeds, data):
    index = data.draw(st.integers(0, len(TOKENIZER_FILES) - 1))
    text = (ws.tokenizer_checkpoint / TOKENIZER_FILES[index]).read_bytes()
    if data.draw(st.integers(0, 4)):
        doc = json.loads(text)
        blob = dumps(data.draw(mutated_json(doc, values=["<|im_start|>", "<|im_end|>", "BPE", "ByteLevel", 0, 511,
                                                         512, "PreTrainedTokenizerFast", "LlamaTokenizer"])))
    else:
        blob = data.draw(mutated_bytes(text, hot=400))
    run_tokenizer(bytes([index]) + blob, ws)


@FUZZ
@given(source=source_strings())
def test_checkpoint_source(ws, source):
    run_source(source.encode("utf-8", "surrogatepass"), ws)


# --- the manifest schema --------------------------------------------------------------------


def test_pipeline_manifests_validate(ws, seeds, tmp_path):
    """parser_seeds/manifest-*.json are manifests the pipeline wrote (tiny Llama: ONNX fp32
    validated, ExecuTorch fp32 and int4, Core ML fp16); each must pass the schema."""
    assert len(seeds["manifest"]) >= 3
    for name, blob in seeds["manifest"].items():
        (tmp_path / "mobilekit.json").write_bytes(blob)
        assert bundle.read_manifest(tmp_path) == json.loads(blob), name


def test_manifest_errors_name_the_json_path(seeds, tmp_path):
    manifest = json.loads(seeds["manifest"]["manifest-executorch-fp32.json"])
    manifest["files"]["model.pte"]["sha256"] = 5
    manifest["max_seq_len"] = "64"
    (tmp_path / "mobilekit.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="mobilekit.json: files.model.pte.sha256 must be a string") as e:
        bundle.read_manifest(tmp_path)
    assert "mobilekit.json: max_seq_len must be a whole number" in str(e.value)
    for bad, message in (([1, 2], "must hold a JSON object"), (b"\xff\xfe\x00", "is not valid JSON"),
                         ({**manifest, "files": {"../etc/x": {"sha256": "0" * 64, "bytes": 1}}},
                          "must be a relative path inside the bundle")):
        (tmp_path / "mobilekit.json").write_bytes(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
        with pytest.raises(BundleError, match=message):
            bundle.read_manifest(tmp_path)


def test_schema_describes_every_decoder_spec_field():
    from mobilekit.modeling.spec import DecoderSpec

    schema = json.loads((resources.files("mobilekit") / "data" / "manifest.schema.json").read_text())
    described = set(schema["properties"]["decoder_spec"]["properties"])
    assert described == {f.name for f in dataclasses.fields(DecoderSpec)} - {"extra"}


# --- inputs that once crashed a parser (issue 14), each must now get a MobilekitError ------

KNOWN_CRASHES = {
    # read_manifest: not an object / not UTF-8 / huge number; readers indexed unchecked fields
    "manifest": [b"[1, 2]", b"\xff", b'{"schema_version": 1, "max_seq_len": ' + b"1" * 5000 + b"}",
                 b'{"schema_version": 1, "target": "onnx", "max_seq_len": 64, "size_bytes": 0, "files": '
                 b'{"a": {"sha256": 5, "bytes": 0}}}'],
    # read_config: a number json cannot convert (int max str digits) escaped as ValueError
    "config": [b'{"vocab_size": ' + b"1" * 5000 + b"}"],
    # resolve: ~unknown-user (RuntimeError from expanduser), a name over 255 bytes (OSError)
    "source": [b"~nobody-at-all/x", b"a" * 300, b"x/" + b"a" * 300],
}


@pytest.mark.parametrize("name,index", [(n, i) for n, inputs in KNOWN_CRASHES.items() for i in range(len(inputs))])
def test_known_crash_inputs(ws, name, index):
    TARGETS[name].run(KNOWN_CRASHES[name][index], ws)

