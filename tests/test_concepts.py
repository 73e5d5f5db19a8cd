import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from makers import make_cub

from cbmctl.concept_generation import Endpoint, generate, parse_answer
from cbmctl.concepts import (
    FilterThresholds,
    builtin_classes,
    check_class_list,
    check_file,
    filter_concepts,
    load_class_list,
    load_concept_set,
    read_lines,
)
from cbmctl.datasets import load_dataset
from cbmctl.errors import CbmctlError

MINIMUM_SIZES = {"cifar10": 100, "cifar100": 500, "cub": 300, "imagenet": 2000, "places365": 1000, "demo": 20}


def test_reading_handles_bom_crlf_comments_blank_lines_and_duplicates(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeff# header\r\nred wings\r\n\r\n  long tail \r\nRed Wings\r\nthe long tail\r\nbeak".encode())
    concepts, issues = read_lines(path)
    assert concepts == ["red wings", "long tail", "beak"]
    messages = [i.message for i in issues]
    assert any("byte-order mark" in m for m in messages) and any("CRLF" in m for m in messages)
    assert any("blank line" in m for m in messages)
    assert sum("duplicate of line" in m for m in messages) == 2
    loaded = load_concept_set(str(path))
    assert loaded.name == "c" and loaded.concepts == concepts and len(loaded.warnings) == len(issues)


def test_reading_refuses_non_utf8_and_empty_sets(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CbmctlError, match="not UTF-8"):
        load_concept_set(str(tmp_path / "latin.txt"))
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(CbmctlError, match="empty"):
        load_concept_set(str(tmp_path / "empty.txt"))
    with pytest.raises(CbmctlError, match="not a built-in set"):
        load_concept_set("no-such-set")


def test_builtin_sets_meet_their_sizes_and_record_a_hash():
    for name, minimum in MINIMUM_SIZES.items():
        concept_set = load_concept_set(name)
        assert len(concept_set.concepts) >= minimum, name
        assert concept_set.record()["sha256"] == concept_set.sha256 and len(concept_set.sha256) == 64
    assert len(builtin_classes("imagenet")) == 1000 and len(builtin_classes("places365")) == 365
    assert builtin_classes("cub")[0] == "black footed albatross" and builtin_classes("cifar100")[1] == "aquarium fish"


def test_class_list_checker_catches_duplicates():
    assert check_class_list(builtin_classes("imagenet")) == []
    issues = check_class_list(["crane", "tench", "Crane", "maillot", "the maillot"])
    assert [(i.line, i.severity) for i in issues] == [(3, "error"), (5, "error")]
    assert "same name as class 0" in issues[0].message


def test_a_cub_classes_txt_gives_the_cub_readers_class_names(tmp_path):
    cub = make_cub(tmp_path / "data", classes=4)
    said = []
    names = load_class_list(str(cub / "classes.txt"), log=said.append)
    assert names == load_dataset(tmp_path / "data").classes == [
        "black footed albatross", "laysan albatross", "sooty albatross", "groove billed ani"]
    assert len(said) == 1 and "numbered" in said[0]
    # numbers out of order, or a plain list that merely starts with digits, are read as written
    (tmp_path / "gaps.txt").write_text("1 a\n3 b\n")
    (tmp_path / "plain.txt").write_text("7 up\nred\n")
    assert load_class_list(str(tmp_path / "gaps.txt"), log=said.append) == ["1 a", "3 b"]
    assert load_class_list(str(tmp_path / "plain.txt"), log=said.append) == ["7 up", "red"]
    assert len(said) == 1


def test_check_reports_errors_and_warnings(tmp_path, tiny_model):
    from cbmctl.backbones import load_tokenizer
    tokenizer, context = load_tokenizer(tiny_model)  # context 24 tokens
    path = tmp_path / "c.txt"
    path.write_text("red wings\nsooty albatross\nred wings\n" + " ".join(["very"] * 30) + " long\n"
                    + "a quite long concept phrase over thirty chars\n")
    issues = check_file(path, ["sooty albatross", "laysan albatross"], tokenizer, context)
    errors = [i.message for i in issues if i.severity == "error"]
    warnings = [i.message for i in issues if i.severity == "warning"]
    assert any("is the class name 'sooty albatross'" in e for e in errors)
    assert any("tokens, over the text encoder's context of 24" in e for e in errors)
    assert any("duplicate of line 1" in w for w in warnings)
    assert any("over 30 characters" in w for w in warnings)


def _unit(vectors):
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_filter_rules_on_hand_made_vectors():
    concepts = ["wings", "a wing", "beak", "albatross", "an extraordinarily long concept name", "feathers", "sky"]
    vectors = _unit([[1, 0, 0, 0], [0.99, 0.14, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                     [0.1, 0.1, 0.9, 0.1], [0.5, 0.5, 0.5, 0.5]])
    classes = ["albatross", "gull"]
    class_vectors = _unit([[0, 0, 1, 0], [0.0, 0.3, 0.1, 1]])
    kept, dropped = filter_concepts(concepts, classes, vectors, class_vectors, FilterThresholds())
    reasons = dict(dropped)
    assert "longer than 30 characters" in reasons["an extraordinarily long concept name"]
    assert reasons["albatross"] == "is the class name 'albatross'"
    assert "to class 'albatross' ≥ 0.85" in reasons["feathers"]
    # of the near-duplicate pair, the one with the higher mean similarity to the rest goes:
    # 'a wing' leans towards 'beak' and 'sky' (mean 0.565) more than 'wings' does (0.497)
    assert reasons["a wing"].startswith("similarity 0.990 to 'wings' ≥ 0.9") and "wings" in kept
    assert len(dropped) == 4 and set(kept) | set(reasons) == set(concepts)
    images = _unit([[1, 0, 0, 0], [0.9, 0.1, 0, 0]] * 3)
    kept2, dropped2 = filter_concepts(concepts, classes, vectors, class_vectors,
                                      FilterThresholds(activation_cutoff=0.5), images)
    assert any(c == "beak" and "mean top-5 image similarity" in r for c, r in dropped2)


def test_filter_rules_with_a_real_tiny_text_encoder(tiny_backbone):
    concepts = ["red wings", "red wing", "long curved beak", "bird", "green leaves on tree"]
    classes = ["sparrow", "bird"]
    vectors = tiny_backbone.encode_texts(concepts).numpy()
    class_vectors = tiny_backbone.encode_texts(classes).numpy()
    to_sparrow = float(vectors[2] @ class_vectors[0])
    pair = float(vectors[0] @ vectors[1])
    # thresholds placed from the encoder's own similarities, so each rule must fire on its intended target
    thresholds = FilterThresholds(max_chars=18, class_similarity=to_sparrow - 1e-4, duplicate_similarity=pair - 1e-4)
    kept, dropped = filter_concepts(concepts, classes, vectors, class_vectors, thresholds)
    reasons = dict(dropped)
    assert "longer than 18" in reasons["green leaves on tree"]
    assert reasons["bird"] == "is the class name 'bird'"
    assert "long curved beak" in reasons or all(float(vectors[2] @ c) < to_sparrow for c in class_vectors)
    assert ("red wings" in reasons) != ("red wing" in reasons) or "long curved beak" in reasons


class FakeChat(BaseHTTPRequestHandler):
    calls: list = []
    behaviour: dict = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        FakeChat.calls.append((prompt, self.headers.get("Authorization")))
        name = prompt.split('"')[1]
        mode = FakeChat.behaviour.get(name, "ok")
        if mode == "slow":
            time.sleep(1.0)
        if mode == "malformed-once" and sum(name in c[0] for c in FakeChat.calls) == 1 or mode == "malformed":
            payload = b"{not json"
        else:
            if "features" in prompt:
                answer = f"- {name} wings\n- 2. Long tail.\nA very long sentence that goes on and on and on\n"
            elif "categories" in prompt:
                answer = "1. bird\n2) animal"
            else:
                answer = "* trees\n* water"
            payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except BrokenPipeError:
            pass


@pytest.fixture
def chat_server():
    FakeChat.calls, FakeChat.behaviour = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_parse_answer_strips_bullets_and_drops_sentences():
    assert parse_answer("- Red wings.\n2) long tail\n* \nThis is far too long to be a concept at all\n") == [
        "red wings", "long tail"]


def test_generate_against_a_local_server(chat_server):
    FakeChat.behaviour = {"gull": "malformed-once", "tern": "slow"}
    endpoint = Endpoint(chat_server, "secret", "test-model", timeout=0.3, retries=2, backoff=0.0)
    result = generate(["albatross", "gull", "tern"], endpoint)
    assert result.concepts[:3] == ["albatross wings", "long tail", "bird"]
    assert "gull wings" in result.concepts  # recovered on the retry after a malformed answer
    assert result.concepts.count("long tail") == 1  # de-duplicated across classes
    assert {(c, k) for c, k, _ in result.failures} == {("tern", "features"), ("tern", "superclasses"),
                                                       ("tern", "surroundings")}
    assert all("timed out" in reason and "after 2 attempts" in reason for _, _, reason in result.failures)
    assert all(auth == "Bearer secret" for _, auth in FakeChat.calls)


def test_generate_without_endpoint_or_usable_answers(chat_server, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("CBMCTL_LLM_BASE_URL", raising=False)
    with pytest.raises(CbmctlError, match="no chat endpoint configured"):
        Endpoint.from_options()
    FakeChat.behaviour = {"gull": "malformed"}
    with pytest.raises(CbmctlError, match="no usable concepts .*malformed answer"):
        generate(["gull"], Endpoint(chat_server, None, "m", timeout=2, retries=2, backoff=0.0))


def test_concepts_cli(cli, tmp_path, tiny_model, chat_server):
    listing = json.loads(cli("concepts", "list", "--json").stdout)
    assert {row["name"]: row["concepts"] >= MINIMUM_SIZES[row["name"]] for row in listing} == {
        name: True for name in MINIMUM_SIZES}
    for name in MINIMUM_SIZES:
        assert cli("concepts", "check", name).exit_code == 0, name
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\nwhiskers\n")
    result = cli("concepts", "check", bad, "--classes", "cifar10")
    assert result.exit_code == 1 and "is the class name 'cat'" in result.output
    shown = json.loads(cli("concepts", "show", "demo", "--json").stdout)
    assert shown["concepts"][:2] == ["red", "orange"] and shown["size"] == len(shown["concepts"])

    concepts = tmp_path / "mine.txt"
    concepts.write_text("red wings\nbird\nan extremely long concept over thirty chars\nlong tail\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("bird\nfish\n")
    out = tmp_path / "kept.txt"
    args = ["concepts", "filter", concepts, "--classes", classes, "--out", out, "--model", tiny_model,
            "--pretrained", "none", "--device", "cpu", "--class-similarity", "2", "--duplicate-similarity", "2"]
    result = cli(*args)
    assert "drop 'bird': is the class name 'bird'" in result.output
    assert "drop 'an extremely long concept over thirty chars': longer than 30" in result.output
    assert read_lines(out)[0] == ["red wings", "long tail"]
    refused = cli(*args)
    assert refused.exit_code == 1 and "exists; pass --force" in refused.output

    cub = make_cub(tmp_path / "data")
    cache = tmp_path / "c.h5"
    assert cli("embed", cub, "--cache", cache, "--model", tiny_model, "--pretrained", "none", "--device", "cpu",
               "--workers", "0", "--quiet").exit_code == 0
    first = cli("concepts", "embed", concepts, "--cache", cache, "--device", "cpu")
    assert "added to the text store beside the cache" in first.output and ".h5.text/" in first.output
    assert "already there" in cli("concepts", "embed", concepts, "--cache", cache, "--device", "cpu").output

    generated = tmp_path / "generated.txt"
    result = cli("concepts", "generate", "--classes", classes, "--out", generated, "--base-url", chat_server,
                 "--model", tiny_model, "--pretrained", "none", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "drop 'bird': is the class name 'bird'" in result.output
    written = read_lines(generated)[0]
    generated_all = {"bird wings", "fish wings", "long tail", "bird", "animal", "trees", "water"}
    for concept in generated_all:  # each one is either written or reported with its reason
        assert (concept in written) != (f"drop '{concept}':" in result.output), concept
    assert "7 concepts generated" in result.output


def test_an_unknown_concept_set_names_the_datasets_own_sets_and_the_closest(tmp_path):
    import json
    from types import SimpleNamespace

    from cbmctl.datasets.config import DatasetConfig
    from cbmctl.preflight import resolve_concepts
    (tmp_path / "world.json").write_text(json.dumps({"concept_sets": {"llm": {"concepts": "concepts/llm.txt"},
                                                                      "distractors": {}}}))
    (tmp_path / "concepts").mkdir()
    (tmp_path / "concepts" / "llm.txt").write_text("red wings\nstriped tail\n")
    (tmp_path / "concepts" / "mine.txt").write_text("a hooked beak\n")
    cache = SimpleNamespace(attrs={"dataset_root": str(tmp_path), "dataset_name": "demo"})
    assert resolve_concepts("llm", DatasetConfig(), cache).concepts == ["red wings", "striped tail"]
    with pytest.raises(CbmctlError) as error:
        resolve_concepts("llmm", DatasetConfig(), cache)
    message = str(error.value)
    assert "not one of this dataset's own (distractors, llm, mine)" in message and message.endswith(
        "did you mean 'llm'?") and "\n" not in message
