"""Hostile and damaged inputs outside the cache, model and run code: chat servers that redirect, trickle,
flood or answer with terminal escapes; concept files and maps with control characters, alias bombs and
non-text values; forged CIFAR pickles; manifests that list an image twice; ambiguous class names. Each case
ends in a one-line error or a warning, through the real click app, with no traceback (the `cli` fixture
re-raises anything but a clean exit), nothing executed and no credential sent elsewhere."""
import json
import pickle
import re
import time
import tracemalloc

import numpy as np
import pytest
from makers import make_cifar10, make_cub, make_imagefolder, make_manifest, make_places365

from cbmctl.concept_generation import MAX_ANSWER_BYTES, Endpoint, generate
from cbmctl.concepts import load_class_list, load_concept_set, read_lines
from cbmctl.datasets import load_dataset
from cbmctl.errors import CbmctlError
from cbmctl.sanitize import first_control, has_control, safe_text, strip_control

SECRET = "sk-test-secret"
HOSTILE = ["\x1b[2J", "\x1b]0;pwned\x07", "\x07", "\x00", "\u202e", "\u200b", "\x9b31m", "\r", "\n"]


def one_line_error(result, *fragments):
    """A clean failure: exit 1, one `Error:` line holding every fragment, no raw control character."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output
    assert not has_control(result.output.replace("\n", "")), repr(result.output)
    return errors[0]


# ---------------------------------------------------------------------------------------------- sanitize

def test_safe_text_shows_every_control_character_visibly():
    for char in HOSTILE + ["\x7f", "\u2028", "\ufeff", "\U000e0001", "\ud800"]:
        shown = safe_text(f"a{char}b")
        assert has_control(f"a{char}b") and not has_control(shown), repr(char)
        assert shown.startswith("a\\") and shown.endswith("b")
    assert safe_text("a\x1b[2Jb") == "a\\x1b[2Jb" and safe_text("\u202eevil") == "\\u202eevil"
    assert safe_text("a\nb\x07", keep_newlines=True) == "a\nb\\x07"
    for plain in ("red wings", "café crème", "北京", "naïve\u00a0space", "🐦 bird", "a\\x1b"):
        assert safe_text(plain) == plain and not has_control(plain)
    assert first_control("ok\u202e\x1b") == "\\u202e" and first_control("ok") is None


def test_strip_control_removes_escape_sequences_whole():
    assert strip_control("red\x1b[2J wings") == "red wings"
    assert strip_control("\x1b]0;pwned\x07long tail") == "long tail"
    assert strip_control("\x1b]8;;http://x\x1b\\link") == "link"
    assert strip_control("nul\x00byte \u202eevil zero\u200bwidth \x9b31mc") == "nulbyte evil zerowidth c"


# ----------------------------------------------------------------------------------- local chat servers

def chat_answer(text: str):
    def respond(handler):
        payload = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
    return respond


def redirect_to(location: str):
    def respond(handler):
        handler.send_response(307)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return respond


def generate_args(tmp_path, server_url, *extra):
    classes = tmp_path / "classes.txt"
    classes.write_text("albatross\n")
    return ["concepts", "generate", "--classes", classes, "--out", tmp_path / "out.txt", "--base-url", server_url,
            "--api-key", SECRET, "--no-filter", "--retries", "1", *extra]


def test_api_key_never_follows_a_redirect_to_another_origin(cli, tmp_path, serve):
    elsewhere = serve(chat_answer("stolen"))
    redirecting = serve(redirect_to(f"{elsewhere.url}/chat/completions"))
    result = cli(*generate_args(tmp_path, redirecting.url))
    one_line_error(result, "redirected to", "another origin", "not followed")
    assert redirecting.seen == [("/v1/chat/completions", f"Bearer {SECRET}")]
    assert elsewhere.seen == []  # neither the key nor the prompt went there
    assert not (tmp_path / "out.txt").exists()


def test_a_redirect_within_the_origin_is_followed_with_the_key(cli, tmp_path, serve):
    def respond(handler):
        if handler.path.startswith("/v1/"):
            return redirect_to("/v2/chat/completions")(handler)
        return chat_answer("- red wings\n- long tail")(handler)
    server = serve(respond)
    result = cli(*generate_args(tmp_path, server.url))
    assert result.exit_code == 0, result.output
    assert read_lines(tmp_path / "out.txt")[0] == ["red wings", "long tail"]
    assert ("/v2/chat/completions", f"Bearer {SECRET}") in server.seen


def test_a_trickling_server_cannot_outlast_the_deadline(cli, tmp_path, serve):
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(400):  # one byte every 50 ms: no single read ever waits as long as the timeout
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)
    server = serve(trickle)
    result = cli(*generate_args(tmp_path, server.url, "--timeout", "0.5"))
    one_line_error(result, "no usable concepts", "timed out after 0.5 s")
    assert len(server.seen) == 3  # one attempt for each of the three prompts


@pytest.mark.parametrize("declare_length", [True, False])
def test_a_huge_answer_is_refused_without_reading_it_whole(cli, tmp_path, serve, declare_length):
    def flood(handler):
        handler.send_response(200)
        if declare_length:
            handler.send_header("Content-Length", str(300 * 1024 * 1024))
        handler.end_headers()  # without a length, HTTP/1.0 ends the body when the connection closes
        block = b" " * 65536
        for _ in range(2 * MAX_ANSWER_BYTES // len(block)):
            handler.wfile.write(block)
    server = serve(flood)
    result = cli(*generate_args(tmp_path, server.url))
    one_line_error(result, "no usable concepts", "refused")
    assert len(server.seen) == 3  # refused, not retried


def test_hostile_answers_are_cleaned_and_every_change_is_reported(cli, tmp_path, serve):
    answer = ("- red\x1b[2J wings\n- \x1b]0;pwned\x07long tail\n- bell\x07\n- nul\x00byte\n- \u202eevil eye\n"
              "- zero\u200bwidth\n" + "x" * 10_000 + "\n# Visual features\n- #hashtag\n- plain beak\n")
    server = serve(chat_answer(answer))
    result = cli(*generate_args(tmp_path, server.url))
    assert result.exit_code == 0, result.output
    raw = (tmp_path / "out.txt").read_bytes().decode()
    assert not has_control(raw.replace("\n", "")) and "xxxxxxxx" not in raw
    assert read_lines(tmp_path / "out.txt")[0] == ["red wings", "long tail", "bell", "nulbyte", "evil eye",
                                                   "zerowidth", "plain beak"]
    assert "control characters stripped from 6 line(s)" in result.stderr
    assert "1 line(s) over 100 characters dropped" in result.stderr
    assert "2 line(s) starting with '#' dropped" in result.stderr
    assert not has_control(result.output.replace("\n", ""))
    assert all(auth == f"Bearer {SECRET}" for _, auth in server.seen)


def test_generation_library_reports_failed_requests_and_goes_on(serve):
    calls = []

    def flaky(handler):
        calls.append(1)
        if len(calls) == 1:
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            chat_answer("- red wings")(handler)
    server = serve(flaky)
    result = generate(["albatross"], Endpoint(server.url, None, "m", timeout=5, retries=1, backoff=0))
    assert result.failures == [("albatross", "features", "HTTP 503 after 1 attempts")]
    assert result.concepts == ["red wings"]


def test_endpoint_refuses_other_schemes_and_warns_about_keys_in_clear(cli, tmp_path):
    with pytest.raises(CbmctlError, match="expected http"):
        Endpoint("file:///etc/passwd", None, "m")
    assert Endpoint("http://example.com/v1", "k", "m").sends_key_in_clear()
    assert not Endpoint("https://example.com/v1", "k", "m").sends_key_in_clear()
    assert not Endpoint("http://127.0.0.1:8/v1", "k", "m").sends_key_in_clear()
    one_line_error(cli(*generate_args(tmp_path, "ftp://host/v1")), "expected http(s)://")


# ------------------------------------------------------------------------- concept files and class lists

def test_control_characters_in_a_concept_file(cli, tmp_path, tiny_model):
    path = tmp_path / "evil\x1b]0;title\x07.txt"
    path.write_text("red\n\x1b[2Jblue\u202e\ngreen\n")
    with pytest.raises(CbmctlError, match=r"evil\\x1b\]0;title\\x07\.txt:2: holds the control character \\x1b"):
        load_concept_set(str(path))
    one_line_error(cli("concepts", "show", path), ":2: holds the control character \\x1b")
    result = cli("concepts", "check", path, "--model", tiny_model)
    assert result.exit_code == 1
    assert "error: " in result.output and ":2: holds the control character \\x1b" in result.output
    assert "1 error(s)" in result.output and not has_control(result.output.replace("\n", ""))
    tabbed = tmp_path / "tabs.txt"
    tabbed.write_text("red\twings\n")  # a tab is white space, not a control character here
    assert load_concept_set(str(tabbed)).concepts == ["red wings"]


def test_alias_bomb_fails_fast_in_little_memory(cli, tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 400
    tracemalloc.start()
    result = cli("concepts", "show", bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(result, "bomb.yaml:2:", "aliases")
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize("content,fragment", [
    ('{"cat": [5, "whiskers"]}', "class 'cat': 5 is not a concept"),
    ('{"cat": null}', "class 'cat': expected a list of concepts"),
    ('{"cat": [["nested"]]}', "class 'cat': ['nested'] is not a concept"),
    ('{"cat": [{"a": 1}]}', "class 'cat': {'a': 1} is not a concept"),
    ('{"cat": ["a"], "cat": ["b"]}', "duplicate key 'cat'"),
    ('{"Cat": ["a"], "cat": ["b"]}', "differ only by case"),
    ('{"ca\\nt": ["a"]}', "holds the control character \\n"),
    ('{"cat": ["\\u001b[2Jwhiskers"]}', "holds the control character \\x1b"),
    ('[' * 50_000, "nested too deeply"),
])
def test_concept_maps_hold_only_text(cli, tmp_path, content, fragment):
    path = tmp_path / "map.json"
    path.write_text(content)
    one_line_error(cli("concepts", "show", path), fragment)


def test_oversized_concept_map_is_refused_by_its_size(cli, tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as handle:
        handle.write("cat: [")
        handle.write('"x",' * 1_100_000)
        handle.write("]\n")
    one_line_error(cli("concepts", "show", path), "over the", "limit")


@pytest.mark.parametrize("content,fragment", [
    ("crane\nCrane\n", "differ only by case"),
    ("crane\nbird\x1b[2J\n", "holds the control character \\x1b"),
    ("bird\n\u202ehsif\n", "holds the control character \\u202e"),
])
def test_class_lists_refuse_ambiguous_or_unsafe_names(cli, tmp_path, content, fragment):
    path = tmp_path / "classes.txt"
    path.write_text(content)
    with pytest.raises(CbmctlError, match="classes.txt"):
        load_class_list(str(path))
    one_line_error(cli("concepts", "generate", "--classes", path, "--out", tmp_path / "o.txt",
                       "--base-url", "http://127.0.0.1:9/v1"), fragment)


def test_concepts_help_texts_state_the_default_the_code_uses(cli):
    """Every --model help that names a default names the one the model-name parser falls back to; the
    concepts commands have no dataset, so their help must not send the user to a dataset's cbmctl.yaml."""
    from cbmctl.backbones.model_names import DEFAULT_MODEL
    assert "text store" in cli("concepts", "embed", "--help").output
    for command in (("concepts", "filter"), ("concepts", "generate"), ("concepts", "check"), ("train",), ("embed",)):
        text = " ".join(cli(*command, "--help").output.split())
        model_help = re.split(r" -\w, --\w| --json", text.split("-m, --model", 1)[1])[0]  # up to the next option
        assert f"default: {DEFAULT_MODEL}".lower() in model_help.lower() or f"else {DEFAULT_MODEL}" in model_help, command
        if command[0] == "concepts":
            assert "dataset" not in model_help and "cbmctl.yaml" not in model_help, command


# ---------------------------------------------------------------------------------------- CIFAR batches

class Call:
    """Pickles as a call of `function(*args)`, the way a forged file would."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _rewrite(path, **changes):
    with open(path, "rb") as handle:
        data = pickle.load(handle, encoding="bytes")
    for key, value in changes.items():
        if value is None:
            data.pop(key.encode(), None)
        else:
            data[key.encode()] = value
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=2)


def test_cifar_labels_outside_the_classes(cli, tmp_path, tiny_model):
    folder = make_cifar10(tmp_path)
    for bad in (3, -1):
        _rewrite(folder / "data_batch_2", labels=[0, 1, bad, 0, 1, 2])
        with pytest.raises(CbmctlError, match=f"data_batch_2: label {bad} is outside the 3 classes"):
            load_dataset(tmp_path)
    result = cli("embed", tmp_path, "--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--quiet")
    one_line_error(result, "data_batch_2: label -1 is outside the 3 classes")


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


@pytest.mark.parametrize("changes,fragment", [
    ({"data": None}, "'data' is missing"),
    ({"labels": None}, "'labels' is missing"),
    ({"data": [[0] * 3072] * 6}, "'data' must be an N×3072 uint8 array"),
    ({"data": np.zeros((6, 100), np.uint8)}, "not (6, 100)"),
    ({"data": np.zeros((6, 3072), np.float32)}, "float32"),
    ({"labels": b"abcdef"}, "must be a list of integer labels"),
    ({"labels": [0, 1, "2", 0, 1, 2]}, "must be a list of integer labels"),
    ({"labels": [0, 1]}, "6 images but 2 labels"),
])
def test_malformed_cifar_batches(tmp_path, changes, fragment):
    folder = make_cifar10(tmp_path)
    _rewrite(folder / "test_batch", **changes)
    with pytest.raises(CbmctlError, match="test_batch") as error:
        load_dataset(tmp_path)
    assert fragment in str(error.value)


def test_forged_array_headers_allocate_nothing(cli, tmp_path, tiny_model):
    folder = make_cifar10(tmp_path)
    terabyte = Call(_reconstruct(), (np.ndarray, (2 ** 40,), b"b"))
    forged = {"data": terabyte, "labels": [0] * 6}
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({k.encode(): v for k, v in forged.items()}, handle, protocol=2)
    tracemalloc.start()
    result = cli("embed", tmp_path, "--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--quiet")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(result, "data_batch_1: not a CIFAR batch file", "more than the file holds")
    assert peak < 100 * 1024 * 1024
    with open(folder / "data_batch_1", "wb") as handle:  # numpy.ndarray called directly, and object arrays
        pickle.dump({b"data": Call(np.ndarray, ((2 ** 40,),)), b"labels": []}, handle, protocol=2)
    with pytest.raises(CbmctlError, match="not a CIFAR batch file"):
        load_dataset(tmp_path)
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": np.array([1, "x"], dtype=object), b"labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(CbmctlError, match="refusing an object array"):
        load_dataset(tmp_path)


def test_cifar_payloads_run_nothing(tmp_path):
    folder = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    for payload in (Call(open, (str(marker), "w")), Call(getattr, (marker, "touch"))):
        with open(folder / "batches.meta", "wb") as handle:
            pickle.dump({b"label_names": payload}, handle, protocol=2)
        with pytest.raises(CbmctlError, match="refusing to load"):
            load_dataset(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("names,fragment", [
    ([b"cat", b"Cat", b"dog"], "differ only by case"),
    ([b"cat", b"do\ng", b"bird"], "holds the control character \\n"),
    (None, "'label_names' must be a list of names"),
    ([b"cat", 5, b"bird"], "'label_names' must be a list of names"),
])
def test_cifar_class_names(tmp_path, names, fragment):
    folder = make_cifar10(tmp_path)
    _rewrite(folder / "batches.meta", label_names=names)
    with pytest.raises(CbmctlError, match="batches.meta") as error:
        load_dataset(tmp_path)
    assert fragment in str(error.value)


# ------------------------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("rows,fragment", [
    ("img/cat0.png,cat,train\nimg/cat0.png,cat,test\n", "already on line 2"),
    ("img/cat0.png,cat,train\nimg/cat0.png,dog,train\n", "already on line 2 (train, label 'cat')"),
    ("img/cat0.png,cat,train\n./img/cat0.png,cat,test\n", "each image may appear once"),
    ("img/cat0.png,0,train\nimg/dog0.png,99999999999,train\n", "numeric labels name classes 0..K-1"),
    ("img/cat0.png,0,train\nimg/dog0.png,-1,train\n", "label -1 is negative"),
    ("img/cat0.png,cat,train\nimg/dog0.png,Cat,train\n", "differ only by case"),
    ("img/cat0.png,c\x1bat,train\n", "holds a control character"),
    ("img/cat0.png,cat\x00,train\n", "holds a control character"),
    ("img/cat0.png," + "x" * 200_000 + ",train\n", "not CSV near line 2 (field larger than field limit"),
])
def test_bad_csv_manifests(cli, tmp_path, tiny_model, rows, fragment):
    (tmp_path / "manifest.csv").write_text("path,label,split\n" + rows)
    result = cli("embed", tmp_path / "manifest.csv", "--model", tiny_model, "--pretrained", "none", "--quiet")
    one_line_error(result, "manifest.csv", fragment)


@pytest.mark.parametrize("row,fragment", [
    ({"path": "a.png", "label": ["cat"]}, "every row needs a path and a label"),
    ({"path": "a.png", "label": True}, "every row needs a path and a label"),
    ({"path": {"x": 1}, "label": "cat"}, "every row needs a path and a label"),
    ({"path": "a\nb.png", "label": "cat"}, "holds a control character"),
])
def test_bad_jsonl_manifests(tmp_path, row, fragment):
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(CbmctlError, match="manifest.jsonl:1") as error:
        load_dataset(tmp_path / "manifest.jsonl")
    assert fragment in str(error.value)


def test_manifest_that_is_not_utf8_or_has_ambiguous_classes(tmp_path):
    make_manifest(tmp_path, "csv")
    (tmp_path / "classes.txt").write_text("cat\nCAT\n")
    with pytest.raises(CbmctlError, match="classes.txt: classes 0 'cat' and 1 'CAT' differ only by case"):
        load_dataset(tmp_path)
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "manifest.csv").write_bytes(b"path,label\n\xff\xfe.png,cat\n")
    with pytest.raises(CbmctlError, match="not UTF-8"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------------- class names in other readers

def test_cub_class_names_and_bad_values(tmp_path):
    cub = make_cub(tmp_path)
    classes = (cub / "classes.txt").read_text()
    (cub / "classes.txt").write_text(classes.replace("Laysan_Albatross", "Black_footed_ALBATROSS"))
    with pytest.raises(CbmctlError, match="classes.txt: classes 0 'black footed albatross' and 1"):
        load_dataset(cub)
    (cub / "classes.txt").write_text(classes)
    images = (cub / "images.txt").read_text()
    (cub / "images.txt").write_text(images.replace("\n", "\x00\n", 1))  # no OS opens a name with NUL
    with pytest.raises(CbmctlError, match=r"images.txt:1: the image path .* holds a control character"):
        load_dataset(cub)
    (cub / "images.txt").write_text(images)
    (cub / "image_class_labels.txt").write_text((cub / "image_class_labels.txt").read_text().replace(" 1\n", " ²\n", 1))
    with pytest.raises(CbmctlError, match="absent from classes.txt"):
        load_dataset(cub)


def test_imagefolder_case_duplicates_are_disambiguated_or_refused(tmp_path):
    root = make_imagefolder(tmp_path / "a", synsets=("n02113186", "n02963159"), mapping=False)
    (root / "LOC_synset_mapping.txt").write_text("n02113186 Cardigan, Cardigan Welsh corgi\nn02963159 cardigan\n")
    assert load_dataset(root).classes == ["Cardigan (n02113186)", "cardigan (n02963159)"]
    folders = make_imagefolder(tmp_path / "b", synsets=("Cat", "cat"), mapping=False)
    with pytest.raises(CbmctlError, match="differ only by case"):
        load_dataset(folders)
    newline = make_imagefolder(tmp_path / "c", synsets=("cat", "do\ng"), mapping=False)
    with pytest.raises(CbmctlError, match=r"holds the control character \\n"):
        load_dataset(newline)


def test_places365_category_indices(tmp_path):
    root = make_places365(tmp_path)
    (root / "categories_places365.txt").write_text("/a/airfield 0\n/b/bakery/shop 2\n/a/apartment 3\n")
    with pytest.raises(CbmctlError, match="indices must run 0..2; 1 is missing"):
        load_dataset(root)
    (root / "categories_places365.txt").write_text("/a/airfield 0\n/b/bakery/shop 1\n/a/apartment 2\n")
    (root / "places365_val.txt").write_text("Places365_val_00000001.jpg ²\n")
    with pytest.raises(CbmctlError, match="places365_val.txt:1: expected"):
        load_dataset(root)


@pytest.mark.parametrize("yaml_text,fragment", [
    ("class_names: [a, \"b\\nc\", d]\n", "holds the control character \\n"),
    ("class_names: {laysan albatross: Black Footed Albatross}\n", "differ only by case"),
    ("class_names: [a, null, c]\n", "not a class name"),
    ("templates: ['a photo of {0.__class__}']\n", "one {} for the class name"),
    ("val_fraction: abc\n", "val_fraction must be a number"),
    ("a: &a [x, x]\nb: [*a, *a]\n", "aliases"),
])
def test_dataset_yaml_is_checked(cli, tmp_path, tiny_model, yaml_text, fragment):
    cub = make_cub(tmp_path)
    (cub / "cbmctl.yaml").write_text(yaml_text)
    result = cli("embed", cub, "--model", tiny_model, "--pretrained", "none", "--quiet")
    one_line_error(result, "cbmctl.yaml", fragment)


def test_dataset_yaml_converts_numbers_written_as_text(tmp_path):
    cub = make_cub(tmp_path, per_class=12)
    (cub / "cbmctl.yaml").write_text("val_fraction: '0.25'\n")
    assert load_dataset(cub).val_fraction == 0.25


def test_parse_answer_bounds_phrases_and_says_so():
    from cbmctl.concept_generation import MAX_PHRASES_PER_ANSWER, parse_answer
    notes = []
    concepts = parse_answer("".join(f"- phrase {i}\n" for i in range(MAX_PHRASES_PER_ANSWER + 7)), notes=notes)
    assert concepts[-1] == f"phrase {MAX_PHRASES_PER_ANSWER - 1}" and len(concepts) == MAX_PHRASES_PER_ANSWER
    assert notes == [f"7 phrase(s) beyond the first {MAX_PHRASES_PER_ANSWER} ignored"]


@pytest.mark.parametrize("key", ["two words", "line\nbreak", "ключ"])
def test_api_keys_a_header_cannot_carry_are_refused(key):
    with pytest.raises(CbmctlError, match="API key holds spaces, control or non-ASCII"):
        Endpoint("http://127.0.0.1:9/v1", key, "m")


def test_a_compressed_answer_is_a_reported_failure_never_decoded(serve):
    def garbled(handler):
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", "12")
        handler.end_headers()
        handler.wfile.write(b"not gzip at all"[:12])
    server = serve(garbled)
    with pytest.raises(CbmctlError, match="no usable concepts .answer compressed with 'gzip', which was not asked"):
        generate(["albatross"], Endpoint(server.url, None, "m", timeout=5, retries=1, backoff=0))


@pytest.mark.parametrize("libyaml", [True, False])
def test_yaml_aliases_refused_with_and_without_libyaml(tmp_path, monkeypatch, libyaml):
    import yaml

    from cbmctl import data_files
    if libyaml and not yaml.__with_libyaml__:
        pytest.skip("PyYAML built without libyaml")
    monkeypatch.setattr(yaml, "__with_libyaml__", libyaml)
    data_files._yaml_loader.cache_clear()
    try:
        path = tmp_path / "m.yaml"
        path.write_text("a: &x [one, two]\nb: *x\n")
        with pytest.raises(CbmctlError, match=r"m.yaml:2:4: not valid YAML \(aliases"):
            data_files.load_yaml(path)
        path.write_text("a: [one]\nb: [two]\na: [three]\n")
        with pytest.raises(CbmctlError, match=r"m.yaml:3:1: not valid YAML \(duplicate key 'a'\)"):
            data_files.load_yaml(path)
        path.write_text("bird: [red wings, 'long tail']\n")
        assert data_files.load_yaml(path) == {"bird": ["red wings", "long tail"]}
    finally:
        data_files._yaml_loader.cache_clear()


def test_a_redirect_to_an_invalid_url_is_a_reported_failure(serve):
    server = serve(redirect_to("http://[::1"))
    with pytest.raises(CbmctlError, match="no usable concepts .request failed .RemoteProtocolError: Invalid URL in location"):
        generate(["albatross"], Endpoint(server.url, SECRET, "m", timeout=5, retries=1, backoff=0))


def test_generation_runs_inside_a_running_event_loop(serve):
    import asyncio
    server = serve(chat_answer("- red wings"))

    async def notebook_cell():  # as in Jupyter, where an event loop already runs
        return generate(["albatross"], Endpoint(server.url, None, "m", timeout=5, retries=1))
    assert asyncio.run(notebook_cell()).concepts == ["red wings"]
