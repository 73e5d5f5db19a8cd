"""`cbmctl concepts`: list, show, check, filter, embed and generate concept sets."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from cbmctl.cli.common import Choice, backbone_options, echo_warning, print_json
from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text


def _say(line: str, err: bool = False) -> None:
    """Every line these commands print holds names from files or servers: shown with control characters
    escaped, never raw."""
    click.echo(safe_text(line), err=err)


@click.group()
def concepts():
    """Concept sets: built-in ones, checks, Label-free-CBM filtering, LLM generation."""


@concepts.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def list_sets(as_json):
    """Built-in concept sets: how many concepts each holds and how many classes its class list has
    (`cbmctl concepts show SET` prints the concepts)."""
    from cbmctl.concepts import builtin_classes, builtin_sets, load_concept_set
    rows = []
    for name in builtin_sets():
        classes = builtin_classes(name)
        rows.append({"name": name, "concepts": len(load_concept_set(name).concepts),
                     "classes": len(classes) if classes else None})
    if as_json:
        return print_json(rows)
    from rich.table import Table

    from cbmctl.cli.common import console
    table = Table("set", "concepts", "classes", title="built-in concept sets")
    for row in rows:
        table.add_row(row["name"], str(row["concepts"]), str(row["classes"] or "-"))
    console().print(table)


@concepts.command()
@click.argument("concept_set")
@click.option("--json", "as_json", is_flag=True, help="Print the set as JSON.")
def show(concept_set, as_json):
    """The concepts of a built-in set NAME or a file PATH."""
    from cbmctl.concepts import load_concept_set
    loaded = load_concept_set(concept_set)
    if as_json:
        return print_json({**loaded.record(), "concepts": loaded.concepts, "warnings": loaded.warnings})
    for warning in loaded.warnings:
        echo_warning(f"warning: {warning}", foreign=True)  # it quotes the file or the server
    text = "\n".join(safe_text(concept) for concept in loaded.concepts)
    click.echo_via_pager(text + "\n") if len(loaded.concepts) > 50 else click.echo(text)


def _classes_for(spec, concept_set):
    from cbmctl.concepts import builtin_classes, load_class_list
    if spec:
        return load_class_list(spec, log=lambda line: _say(line, err=True))
    return builtin_classes(concept_set) or []


@concepts.command()
@click.argument("concept_set")
@click.option("--classes", default=None, help="Class list (file or built-in name); default: the set's own.")
@click.option("--model", "-m", default=None, help="Whose tokenizer sets the length limit (default: ViT-L-14, "
              "the demo CLIP for the demo set).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check(concept_set, classes, model, as_json):
    """Report control characters, duplicates, blank lines, BOM/CRLF, over-long concepts and class names
    used as concepts. Exits 1 on errors, 0 with warnings only."""
    from cbmctl.backbones import DEFAULT_MODEL, backbone_request, load_tokenizer
    from cbmctl.concepts import check_concept_set, locate_concept_set
    _, name, _ = locate_concept_set(concept_set)
    class_names = _classes_for(classes, name)
    model = model or ("demo" if name == "demo" else DEFAULT_MODEL)
    backbone_request(model, None)  # an unknown model is an error before open_clip loads (seconds)
    tokenizer, context = load_tokenizer(model)
    loaded, path, issues = check_concept_set(concept_set, class_names, tokenizer, context)
    errors = [i for i in issues if i.severity == "error"]
    if as_json:
        print_json({**loaded.record(), "issues": [vars(i) for i in issues], "ok": not errors})
    else:
        for issue in issues:
            where = f"{path}:{issue.line}" if issue.line else str(path)
            _say(f"{issue.severity}: {where}: {issue.message}")
        _say(f"{loaded.name}: {len(loaded.concepts)} concepts, {len(errors)} error(s), "
             f"{len(issues) - len(errors)} warning(s)")
    if errors:
        raise SystemExit(1)


@concepts.command(name="filter")
@click.argument("concept_set")
@click.option("--classes", default=None, help="Class list (file or built-in name); default: the set's own.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Where to write the kept concepts.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@backbone_options(model_default="the --cache's backbone, else ViT-L-14 (the demo CLIP for the demo set)")
@click.option("--max-chars", default=30, show_default=True, type=click.IntRange(1),
              help="Drop concepts longer than this many characters.")
@click.option("--class-similarity", default=0.85, show_default=True, type=float,
              help="Drop concepts at least this similar (text cosine) to a class name (above 1: never).")
@click.option("--duplicate-similarity", default=0.9, show_default=True, type=float,
              help="Of two concepts at least this similar, drop the one less similar to all others (above 1: "
                   "never).")
@click.option("--activation-cutoff", default=None, type=float,
              help="Drop concepts whose mean top-5 image similarity on --cache is below this.")
@click.option("--cache", "cache_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="An embedding cache: its backbone is used, its text store reused, its images for the cutoff.")
@click.option("--split", default="train", show_default=True, type=Choice(["train", "val", "test"]),
              help="The --cache split whose images --activation-cutoff scores concepts on.")
@click.option("--json", "as_json", is_flag=True, help="Print kept and dropped concepts as JSON.")
def filter_command(concept_set, classes, out, force, model, pretrained, device, max_chars, class_similarity,
                   duplicate_similarity, activation_cutoff, cache_path, split, as_json):
    """Apply the Label-free CBM filters and write what survives to --out; every drop is printed with its
    reason. Similarities come from the CLIP text encoder (--model, or the --cache's backbone)."""
    from cbmctl.concepts import ConceptSet, FilterThresholds, encode_concepts, filter_concepts, load_concept_set
    out = Path(out)
    if out.exists() and not force:
        raise CbmctlError(f"{out} exists; pass --force to replace it")
    loaded = load_concept_set(concept_set)
    class_names = _classes_for(classes, loaded.name)
    backbone, cache = _backbone(model, pretrained, device, cache_path, loaded.name)
    concept_vectors, _, _ = encode_concepts(backbone, loaded, cache_path)
    class_vectors = (encode_concepts(backbone, ConceptSet("classes", class_names, "classes"), cache_path)[0]
                     if class_names else concept_vectors[:0])
    images = cache.split(split).embeddings.astype("float32") if cache is not None and activation_cutoff is not None \
        else None
    if activation_cutoff is not None and images is None:
        raise click.UsageError("--activation-cutoff needs --cache (the images to score concepts on)")
    thresholds = FilterThresholds(max_chars, class_similarity, duplicate_similarity, activation_cutoff)
    kept, dropped = filter_concepts(loaded.concepts, class_names, concept_vectors, class_vectors, thresholds, images)
    _write_lines(out, kept, f"filtered from {loaded.source} ({loaded.sha256[:12]}) with {backbone.name}")
    if as_json:
        return print_json({"kept": kept, "dropped": [{"concept": c, "reason": r} for c, r in dropped],
                           "out": str(out)})
    for concept, reason in dropped:
        _say(f"drop {concept!r}: {reason}")
    _say(f"kept {len(kept)} of {len(loaded.concepts)} concepts -> {out}")


def _write_lines(path: Path, lines, header: str) -> None:
    from cbmctl.files import write_text_atomic
    # a header holding a newline would turn its remainder into a concept on re-reading
    write_text_atomic(path, f"# {safe_text(header)}\n" + "".join(f"{line}\n" for line in lines))


def _backbone(model, pretrained, device, cache_path, set_name):
    from cbmctl.backbones import DEFAULT_MODEL, load_backbone, load_backbone_of_cache
    if cache_path:
        from cbmctl.cache import open_cache
        cache = open_cache(cache_path)
        if model and model != cache.attrs["backbone_model"]:
            raise CbmctlError(f"--model {model} differs from the cache's {cache.attrs['backbone_model']}")
        return load_backbone_of_cache(cache, device), cache
    return load_backbone(model or ("demo" if set_name == "demo" else DEFAULT_MODEL), pretrained, device), None


@concepts.command(name="embed")
@click.argument("concept_set")
@click.option("--cache", "cache_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The embedding cache whose backbone encodes the concepts and whose text store keeps them.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N.")
def embed_command(concept_set, cache_path, device):
    """Add a concept set's text embeddings to a cache's text store (no work if already there)."""
    from cbmctl.cache import TextStore
    from cbmctl.concepts import encode_concepts, load_concept_set
    loaded = load_concept_set(concept_set)
    backbone, _ = _backbone(None, None, device, cache_path, loaded.name)
    _, key, created = encode_concepts(backbone, loaded, cache_path)
    state = "added to" if created else "already there, in"
    # the cache file itself is never written: the embeddings go to the text store beside it
    _say(f"{loaded.name} ({len(loaded.concepts)} concepts, sha256 {loaded.sha256[:12]}): {state} the text store "
         f"beside the cache, {TextStore.beside(cache_path).entry(key)}")


@concepts.command()
@click.option("--classes", "classes_spec", required=True, help="Class list file (or built-in dataset name).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Where to write the generated concepts.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. https://host/v1 "
              "[env OPENAI_BASE_URL]")
@click.option("--api-key", default=None, help="[env OPENAI_API_KEY]")
@click.option("--llm-model", default=None, help="Chat model name [env CBMCTL_LLM_MODEL; default gpt-4o-mini]")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0, 3600, min_open=True),
              help="Seconds per attempt: connecting, waiting and receiving the whole answer must fit in it.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(1, 10),
              help="Attempts per request (timeouts, connection errors, 429/5xx, malformed answers); a request "
                   "that still fails is reported and skipped.")
@click.option("--no-filter", is_flag=True, help="Write the raw de-duplicated concepts without filtering.")
@backbone_options(model_default="ViT-L-14, whose text encoder filters the answers (unused with --no-filter)")
def generate(classes_spec, out, force, base_url, api_key, llm_model, timeout, retries, no_filter, model,
             pretrained, device):
    """Generate concepts for a class list with a chat model (features, superclasses, surroundings), then
    filter them like `concepts filter`."""
    from cbmctl.concept_generation import Endpoint
    from cbmctl.concept_generation import generate as run_generation
    from cbmctl.concepts import ConceptSet, FilterThresholds, encode_concepts, filter_concepts, load_class_list
    out = Path(out)
    if out.exists() and not force:
        raise CbmctlError(f"{out} exists; pass --force to replace it")
    endpoint = Endpoint.from_options(base_url, api_key, llm_model, timeout, retries)
    classes = load_class_list(classes_spec, log=lambda line: _say(line, err=True))
    if endpoint.sends_key_in_clear():
        _say(f"warning: the API key goes unencrypted over http to {endpoint.base_url}", err=True)
    with click.progressbar(length=3 * len(classes), label="asking", file=sys.stderr) as bar:
        result = run_generation(classes, endpoint, progress=lambda: bar.update(1))
    for warning in result.warnings:
        echo_warning(f"warning: {warning}", foreign=True)  # it quotes the file or the server
    for name, kind, reason in result.failures:
        echo_warning(f"warning: {name} / {kind}: {reason}", foreign=True)
    kept, dropped = result.concepts, []
    if not no_filter:
        backbone, _ = _backbone(model, pretrained, device, None, "")
        generated = ConceptSet(out.stem, result.concepts, "generated")
        vectors = encode_concepts(backbone, generated)[0]
        class_vectors = encode_concepts(backbone, ConceptSet("classes", classes, "classes"))[0]
        kept, dropped = filter_concepts(result.concepts, classes, vectors, class_vectors, FilterThresholds())
        for concept, reason in dropped:
            _say(f"drop {concept!r}: {reason}")
    _write_lines(out, kept, f"generated by {endpoint.model} for {len(classes)} classes")
    _say(f"{len(result.concepts)} concepts generated, {len(kept)} kept -> {out}"
         + (f" ({len(result.failures)} request(s) failed)" if result.failures else ""))
