"""Round four against inputs: only regular files are read (a FIFO as --config or as a run's config.yaml, a
directory, a symlink loop: one line, never a hang), size caps count what is read; a compressed answer from
the chat endpoint is refused before a byte is decoded, whatever its ratio; manifest rows stay inside the
dataset root unless the user opts in, and the cache then says which images came from outside; images that
are bombs, animations, empty files, directories or symlink loops are skipped with a reason or converted."""
import json
import os
import struct
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest
from makers import make_imagefolder, make_manifest, picture
from test_hostile_inputs import SECRET, generate_args, one_line_error
from test_hostile_models import in_thread

from cbmctl.concept_generation import Endpoint, generate
from cbmctl.errors import CbmctlError

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


# 1. only regular files are read, and the cap applies to what is read

@needs_fifo
@pytest.mark.parametrize("where", ["config", "concepts show", "classes", "concept map"])
def test_a_named_pipe_is_refused_not_waited_on(cli, tmp_path, where):
    fifo = tmp_path / ("set.yaml" if where == "concept map" else "pipe.txt")
    os.mkfifo(fifo)
    args = {"config": ("train", "--config", fifo), "concepts show": ("concepts", "show", fifo),
            "classes": ("concepts", "generate", "--classes", fifo, "--out", tmp_path / "o.txt", "--base-url",
                        "http://127.0.0.1:9/v1"),
            "concept map": ("concepts", "show", fifo)}[where]
    result = in_thread(cli, *args)["value"]
    one_line_error(result, "pipe" if where != "concept map" else "set.yaml", "is a named pipe, not a regular file")


def test_directories_and_symlink_loops_are_named_for_what_they_are(cli, tmp_path):
    (tmp_path / "folder").mkdir()
    one_line_error(cli("concepts", "show", tmp_path / "folder"), "is a directory, not a regular file")
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    one_line_error(cli("concepts", "show", loop), "loop.txt: cannot read (Too many levels of symbolic links)")
    (tmp_path / "c.yaml").symlink_to(tmp_path / "c.yaml")
    refused = cli("train", "--config", tmp_path / "c.yaml")  # click's own check: a usage error, exit 2
    assert refused.exit_code == 2 and "does not exist" in refused.output and "Traceback" not in refused.output


def test_the_size_cap_counts_what_is_read_not_what_stat_says(tmp_path):
    from cbmctl.data_files import read_bytes_capped, read_text_capped
    proc = "/proc/self/status"  # stat says 0 bytes; reading gives more
    if os.path.exists(proc):
        assert os.stat(proc).st_size == 0
        with pytest.raises(CbmctlError, match="status: more than 10 bytes"):
            read_bytes_capped(proc, 10)
        assert "Name:" in read_text_capped(proc, 1 << 20)
    (tmp_path / "big.txt").write_bytes(b"x" * 101)
    with pytest.raises(CbmctlError, match="big.txt: 101 bytes, over the 100-byte limit"):
        read_bytes_capped(tmp_path / "big.txt", 100)
    assert read_bytes_capped(tmp_path / "big.txt", 101) == b"x" * 101


# 2. a compressed answer is refused unread, whatever the ratio the server picks

@pytest.fixture(scope="module")
def gzip_bomb():
    """A gzip body of about 100 KB that unpacks to 100 MB of zeros (built without holding the 100 MB)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip container
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(100)) + packer.flush()


def compressed(body: bytes, encoding: str = "gzip"):
    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", encoding)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return respond


def test_a_gzip_bomb_is_refused_before_it_is_decoded(cli, tmp_path, serve, gzip_bomb):
    assert len(gzip_bomb) < 400_000 and zlib.decompressobj(31).decompress(gzip_bomb, 1 << 20) == bytes(1 << 20)
    server = serve(compressed(gzip_bomb))
    tracemalloc.start()
    result = cli(*generate_args(tmp_path, server.url))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(result, "no usable concepts", "answer compressed with 'gzip', which was not asked for")
    assert peak < 16 << 20  # the 100 MB it unpacks to never exist
    assert len(server.seen) == 3 and not (tmp_path / "out.txt").exists()


def test_an_answer_that_hides_its_compression_is_read_raw_and_capped(serve, gzip_bomb):
    server = serve(compressed(gzip_bomb, "identity"))  # gzip bytes, declared as plain: never unpacked
    with pytest.raises(CbmctlError, match=r"no usable concepts \(malformed answer \(not JSON"):
        generate(["albatross"], Endpoint(server.url, SECRET, "m", timeout=5, retries=1, backoff=0))


@pytest.mark.parametrize("payload, fragment", [
    ({"choices": []}, "malformed answer (no choices)"),
    ({"choices": [{"message": {"content": 5}}]}, "choices[0].message.content is not text"),
    ([1, 2], "malformed answer (no choices)"),
])
def test_answers_without_a_text_are_reported_in_words(serve, payload, fragment):
    body = json.dumps(payload).encode()
    server = serve(compressed(body, "identity"))
    with pytest.raises(CbmctlError) as raised:
        generate(["albatross"], Endpoint(server.url, None, "m", timeout=5, retries=1, backoff=0))
    assert fragment in str(raised.value) and "IndexError" not in str(raised.value)


# 3. manifest rows stay inside the dataset root unless the user opts in

@pytest.mark.parametrize("row", ["../../etc/passwd", "/proc/self/environ", "/dev/zero", "img/../../x.png"])
def test_manifest_rows_outside_the_root_are_refused(cli, tmp_path, tiny_model, row):
    make_manifest(tmp_path / "data", "csv")
    with open(tmp_path / "data" / "manifest.csv", "a") as handle:
        handle.write(f"{row},cat,train\n")
    for command in ("embed", "cms", "train"):
        result = cli(command, tmp_path / "data", "--model", tiny_model, "--pretrained", "none", "--cache",
                     tmp_path / "c.h5")
        line = one_line_error(result, "1 listed image path(s) lead outside the dataset root", "--allow-outside-root")
        assert repr(row) in line
    assert not (tmp_path / "c.h5").exists()


def test_images_outside_the_root_are_read_when_allowed_and_recorded(cli, tmp_path, tiny_model):
    make_manifest(tmp_path / "data", "csv", per_class=4)
    (tmp_path / "elsewhere").mkdir()
    picture(1, 9).save(tmp_path / "elsewhere" / "dog9.png")
    with open(tmp_path / "data" / "manifest.csv", "a") as handle:
        handle.write(f"{tmp_path / 'elsewhere' / 'dog9.png'},dog,train\n../../etc/passwd,cat,train\n/dev/zero,cat,test\n")
    result = cli("embed", tmp_path / "data", "--model", tiny_model, "--pretrained", "none", "--cache",
                 tmp_path / "c.h5", "--workers", "0", "--quiet", "--allow-outside-root", "--json")
    assert result.exit_code == 0, result.output
    skipped = {entry["path"]: entry["reason"] for entry in json.loads(result.stdout)["skipped"]}
    assert skipped["/dev/zero"] == "is a character device, not an image file"
    with h5py.File(tmp_path / "c.h5") as cache:
        assert cache.attrs["outside_root_images"] == 3
        outside = {path for split in ("train", "val") for path, flag in zip(
            cache[f"splits/{split}/paths"].asstr()[()], cache[f"splits/{split}/outside_root"][()]) if flag}
        inside = {path for split in ("train", "val", "test") for path in cache[f"splits/{split}/paths"].asstr()[()]}
    assert outside == {str(tmp_path / "elsewhere" / "dog9.png")}  # embedded, and marked as from outside
    assert len(inside - outside) == 8
    from cbmctl.datasets import load_dataset
    assert "3 image(s) lie outside the dataset root (`allow_outside_root`); the cache records which" in \
        load_dataset(tmp_path / "data", allow_outside_root=True).notes


# 4. hostile "images": bombs, animations, empty files, directories, loops, names with newlines

def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width × height 1-bit pixels and holds none: 57 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_hostile_images_are_skipped_with_a_reason_or_converted(tmp_path):
    from PIL import Image

    from cbmctl.datasets.base import FileImages
    from cbmctl.images import BadImage, load_rgb
    root = tmp_path / "images"
    root.mkdir()
    (root / "bomb.png").write_bytes(_png_header(10_000, 10_000))  # 1e8 pixels: PIL only warns below 1.8e8
    (root / "huge.png").write_bytes(_png_header(100_000, 100_000))
    (root / "empty.jpg").write_bytes(b"")
    (root / "folder.jpg").mkdir()
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    frames = [picture(k, 0, 24) for k in range(3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    picture(0, 1, 24).save(root / "new\nline.png")
    reasons = {}
    for name in ("bomb.png", "huge.png", "empty.jpg", "folder.jpg", "loop.jpg"):
        with pytest.raises(BadImage) as raised:
            load_rgb(FileImages(root), name)
        reasons[name] = str(raised.value)
    assert "could be decompression bomb" in reasons["bomb.png"] and "could be decompression bomb" in reasons["huge.png"]
    assert reasons["empty.jpg"] == "empty file" and reasons["folder.jpg"] == "is a directory, not an image file"
    assert reasons["loop.jpg"] == "unreadable image (Too many levels of symbolic links)"
    first = load_rgb(FileImages(root), "animated.gif")  # an animation is read as its first frame
    assert first.mode == "RGB" and first.size == (24, 24)
    distance = [np.abs(np.asarray(first, float) - np.asarray(frame.convert("RGB"), float)).mean() for frame in frames]
    assert distance[0] < min(distance[1:])
    assert isinstance(load_rgb(FileImages(root), "new\nline.png"), Image.Image)


def test_symlink_loops_and_newlines_in_a_folder_dataset_end_in_a_result_or_one_line(tmp_path):
    from cbmctl.datasets import load_dataset
    root = make_imagefolder(tmp_path / "data", synsets=("n1", "n2"), per_class=3, mapping=False)
    (root / "train" / "n1" / "loop").symlink_to(root / "train" / "n1")  # a folder that contains itself
    (root / "train" / "n1" / "self.jpg").symlink_to(root / "train" / "n1" / "self.jpg")
    dataset = in_thread(load_dataset, root)["value"]
    assert sum(len(records) for records in dataset.splits.values()) == 6 + 4  # train/ + val/, nothing twice
    (root / "train" / "bad\nname").mkdir()
    picture(0, 0).save(root / "train" / "bad\nname" / "x.png")
    with pytest.raises(CbmctlError, match=r"class \d holds the control character \\n"):
        load_dataset(root)


def test_concepts_embed_says_where_the_embeddings_went(cli, tmp_path, tiny_model):
    from makers import make_cub
    cub = make_cub(tmp_path / "data", classes=2, per_class=3)
    cache = tmp_path / "c.h5"
    assert cli("embed", cub, "--cache", cache, "--model", tiny_model, "--pretrained", "none", "--device", "cpu",
               "--workers", "0", "--quiet").exit_code == 0
    (tmp_path / "c.txt").write_text("red wings\nlong tail\n")
    before = cache.read_bytes()
    result = cli("concepts", "embed", tmp_path / "c.txt", "--cache", cache, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"added to the text store beside the cache, {cache}.text/" in result.output and " in " not in result.output
    assert cache.read_bytes() == before


def test_a_concept_longer_than_a_name_may_be_is_an_error_in_check_and_load(cli, tmp_path):
    concepts = tmp_path / "long.txt"
    concepts.write_text("red wings\n" + "x" * 1001 + "\n")
    checked = cli("concepts", "check", concepts, "--classes", "cub")
    assert checked.exit_code == 1 and "long.txt:2: 'xxxx" in checked.output and "1001 characters, over the 1000" \
        in checked.output
    one_line_error(cli("concepts", "show", concepts), "long.txt: concept 1 has a name of 1001 characters (at most 1000)")
