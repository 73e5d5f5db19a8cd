"""Train the demo world's tiny CLIP from scratch (seeded). Rerun with:

    python examples/train_demo_clip.py --minutes 35 --seed 7

Images are drawn fresh from the world's species (and, half the time, from uniformly random attribute
combinations, so that colour, shape and the rest are learnt apart from the species that usually carry
them). Each step contrasts the batch against captions of three kinds: every attribute phrase (and the
distractor phrases, which nothing matches), every species prompt, and one composed caption per image.
The loss is multi-positive: any caption an image satisfies is a positive, and each positive is scored
against the negatives only."""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cbmctl.demo import species as demo_species
from cbmctl.demo import world
from cbmctl.demo.vocabulary import DISTRACTORS, FAMILIES

HERE = Path(__file__).parent
CLASS_TEMPLATE = "a photo of a {}."


def value_phrases():
    """(family, value, phrasing) for every phrasing of every value; distractors have value None."""
    rows = [(f, v, p) for f, values in FAMILIES.items() for v, phrases in values.items() for p in phrases]
    rows += [(f, None, p) for f, phrases in DISTRACTORS.items() for p in phrases]
    return rows


def compose_caption(attributes: dict, species_name: str | None, rng) -> tuple[str, dict, str | None]:
    """A caption naming a random subset of the attributes (and maybe the species), in varied wording."""
    families = [f for f in FAMILIES if rng.random() < 0.6] or [list(FAMILIES)[int(rng.integers(5))]]
    said = {f: attributes[f] for f in families}
    phrase = {f: FAMILIES[f][attributes[f]][int(rng.integers(len(FAMILIES[f][attributes[f]])))]
              for f in families}
    words = []
    if "size" in said:
        words.append(phrase["size"].replace(" size", ""))
    if "color" in said:
        words.append(phrase["color"])
    if "pattern" in said and not phrase["pattern"].startswith("with"):
        words.append(phrase["pattern"].replace(" pattern", "").replace(" surface", ""))
    noun = phrase["shape"].replace(" shape", "") if "shape" in said else "shape"
    words.append(noun)
    if "pattern" in said and phrase["pattern"].startswith("with"):
        words.append(phrase["pattern"])
    if "background" in said:
        bg = phrase["background"]
        words.append(bg if bg.startswith("on") else f"on a {bg.replace(' background', '')} background"
                     if "background" in bg else f"on {bg.replace('y', '')}" if bg.endswith("y") else bg)
    text = " ".join(words)
    if rng.random() < 0.5:
        text = "a " + text
    named = None
    if species_name is not None and rng.random() < 0.3:
        text = f"a photo of a {species_name}, {text}"
        named = species_name
    return text, said, named


def draw_batch(size: int, rng, all_species):
    """Images, their attributes, and their species index (-1 for a random-attribute image)."""
    images, attrs, labels = [], [], []
    for _ in range(size):
        if rng.random() < 0.5:
            k = int(rng.integers(len(all_species)))
            drawn = demo_species.sample_attributes(all_species[k].profile, rng)
        else:
            k = -1
            drawn = {f: list(v)[int(rng.integers(len(v)))] for f, v in FAMILIES.items()}
        images.append(np.asarray(world.render(drawn, rng)))
        attrs.append(drawn)
        labels.append(k)
    return np.stack(images), attrs, np.array(labels)


def encode_attributes(attrs) -> np.ndarray:
    """(B, families) value indices."""
    return np.array([[list(values).index(a[f]) for f, values in FAMILIES.items()] for a in attrs])


def caption_targets(attrs, labels, captions, phrase_index, num_species):
    """Which texts each image satisfies (positive) and which pairs take part in the loss (include).

    Texts are ordered: attribute phrases, species prompts (two per species), composed captions."""
    codes = encode_attributes(attrs)  # B × F
    batch = len(codes)
    phrase_pos = (phrase_index[:, 1][None, :] >= 0) & (codes[:, phrase_index[:, 0]] == phrase_index[:, 1][None, :])
    species_pos = np.zeros((batch, 2 * num_species), dtype=bool)
    has_species = labels >= 0
    species_pos[np.flatnonzero(has_species), labels[has_species]] = True
    species_pos[np.flatnonzero(has_species), num_species + labels[has_species]] = True
    families = list(FAMILIES)
    required = np.full((len(captions), len(families)), -1)
    named = np.full(len(captions), -2)
    names = [s.name for s in demo_species.species()]
    for j, (_, said, who) in enumerate(captions):
        for f, v in said.items():
            required[j, families.index(f)] = list(FAMILIES[f]).index(v)
        if who is not None:
            named[j] = names.index(who)
    fits = ((required[None, :, :] < 0) | (codes[:, None, :] == required[None, :, :])).all(axis=2)
    fits &= (named[None, :] == -2) | (labels[:, None] == named[None, :])
    positive = np.concatenate([phrase_pos, species_pos, fits], axis=1)
    include = np.ones_like(positive)
    include[~has_species, phrase_pos.shape[1]:phrase_pos.shape[1] + 2 * num_species] = False
    return positive, include


def _as_is(batch):
    return batch


class _Batches(__import__("torch").utils.data.IterableDataset):
    """An endless, seeded stream of training batches, drawn in a worker process beside the training."""

    def __init__(self, batch_size, seed):
        self.batch_size, self.seed = batch_size, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        all_species = demo_species.species()
        while True:
            images, attrs, labels = draw_batch(self.batch_size, rng, all_species)
            captions = [compose_caption(a, all_species[k].name if k >= 0 else None, rng)
                        for a, k in zip(attrs, labels)]
            yield images, attrs, labels, captions


def to_tensor(images, mean, std):
    import torch
    x = torch.from_numpy(images).float().div_(255).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def multi_positive_loss(logits, positive, include):
    """Mean over (row, positive column) of -log( e^l_pos / (e^l_pos + sum_neg e^l_neg) ), both directions."""
    import torch

    def one_way(lg, pos, inc):
        neg = inc & ~pos
        neg_lse = torch.logsumexp(lg.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
        terms = torch.logaddexp(lg, neg_lse) - lg
        mask = pos & inc
        return (terms * mask).sum() / mask.sum().clamp(min=1)

    return 0.5 * (one_way(logits, positive, include) + one_way(logits.t(), positive.t(), include.t()))


def family_accuracy(model, tokenizer, images, attrs, mean, std) -> dict:
    """Zero-shot accuracy per attribute family on rendered images (canonical phrases, no template)."""
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        feats = F.normalize(model.encode_image(to_tensor(images, mean, std)).float(), dim=-1)
        out = {}
        for family, values in FAMILIES.items():
            names = list(values)
            text = F.normalize(model.encode_text(tokenizer([values[v][0] for v in names])).float(), dim=-1)
            pred = (feats @ text.t()).argmax(1).numpy()
            truth = np.array([names.index(a[family]) for a in attrs])
            out[family] = float((pred == truth).mean())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", default=str(HERE / "cbmctl-demo.safetensors"))
    args = parser.parse_args(argv)

    import open_clip
    import torch
    from safetensors.torch import save_file

    from cbmctl.backbones.weights import IDS_KEY
    torch.manual_seed(args.seed)
    open_clip.add_model_config(str(HERE / "cbmctl-demo.json"))
    model = open_clip.create_model("cbmctl-demo").to(memory_format=torch.channels_last)
    tokenizer = open_clip.get_tokenizer("cbmctl-demo")
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    all_species = demo_species.species()
    families = list(FAMILIES)
    phrases = value_phrases()
    phrase_texts = [p for _, _, p in phrases]
    class_texts = [CLASS_TEMPLATE.format(s.name) for s in all_species] + [s.name for s in all_species]
    held_rng = np.random.default_rng(10_000 + args.seed)
    held_images, held_attrs, _ = draw_batch(512, held_rng, all_species)
    # Train over only the token rows this world's texts use: a dense gradient and Adam state for all
    # 49,408 rows would cost more than the rest of the text tower.
    vocabulary = set(torch.unique(tokenizer(phrase_texts + class_texts)).tolist())
    sample_rng = np.random.default_rng(args.seed + 1)
    words = set()
    for _ in range(20000):  # captions are made of a small closed set of words; collect them all
        k = int(sample_rng.integers(len(all_species)))
        drawn = demo_species.sample_attributes(all_species[k].profile, sample_rng)
        words.update(compose_caption(drawn, all_species[k].name, sample_rng)[0].replace(",", " , ").split())
    vocabulary.update(torch.unique(tokenizer(sorted(words))).tolist())
    token_ids = torch.tensor(sorted(vocabulary))
    lookup = torch.full((model.token_embedding.num_embeddings,), -1, dtype=torch.long)
    lookup[token_ids] = torch.arange(len(token_ids))
    full_embedding = model.token_embedding
    model.token_embedding = torch.nn.Embedding.from_pretrained(full_embedding.weight[token_ids].clone(), freeze=False)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    phrase_index = np.array([[families.index(f), -1 if v is None else list(FAMILIES[f]).index(v)]
                             for f, v, _ in phrases])
    batches = iter(torch.utils.data.DataLoader(_Batches(args.batch_size, args.seed), batch_size=None,
                                               collate_fn=_as_is, num_workers=1, prefetch_factor=4))
    budget = args.minutes * 60
    started = time.time()
    step, warmup, history = 0, 100, []
    while time.time() - started < budget:
        progress = (time.time() - started) / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * progress)) * 0.95 + 0.05)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, attrs, labels, captions = next(batches)
        texts = phrase_texts + class_texts + [c[0] for c in captions]
        positive, include = caption_targets(attrs, labels, captions, phrase_index, len(all_species))
        tokens = lookup[tokenizer(texts)]
        if (tokens < 0).any():
            raise RuntimeError("a caption used a token outside the training vocabulary")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_features = model.encode_image(to_tensor(images, mean, std))
            text_features = model.encode_text(tokens)
        image_features = torch.nn.functional.normalize(image_features.float(), dim=-1)
        text_features = torch.nn.functional.normalize(text_features.float(), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        loss = multi_positive_loss(logits, torch.from_numpy(positive), torch.from_numpy(include))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % 100 == 0:
            model.eval()
            accuracy = family_accuracy(model, lambda t: lookup[tokenizer(t)], held_images, held_attrs, mean, std)
            model.train()
            history.append({"step": step, "minutes": round((time.time() - started) / 60, 2),
                            "loss": round(float(loss.detach()), 4), **{k: round(v, 3) for k, v in accuracy.items()}})
            print(json.dumps(history[-1]), flush=True)
    model.eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    state[IDS_KEY] = token_ids
    wall = time.time() - started
    save_file(state, args.out, metadata={"seed": str(args.seed), "steps": str(step)})
    record = {
        "command": "python examples/train_demo_clip.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "steps": step, "batch_size": args.batch_size, "lr": args.lr,
        "wall_seconds": round(wall, 1), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "open_clip": open_clip.__version__, "history": history,
    }
    Path(args.out).with_suffix(".training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB) after {step} steps, {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
