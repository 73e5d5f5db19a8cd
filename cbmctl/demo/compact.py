"""The demo CLIP's weight file keeps only the token-embedding rows its captions use (the full 49,408-row
table would dominate the file), with their token ids under IDS_KEY (train_clip.py trains on exactly those
rows); loading puts them back into a zero table of the full size."""
from __future__ import annotations

TOKEN_KEY = "token_embedding.weight"
IDS_KEY = "cbmctl.token_ids"


def expand(state_dict: dict, vocab_size: int) -> dict:
    if IDS_KEY not in state_dict:
        return state_dict
    import torch
    rows = state_dict[TOKEN_KEY]
    table = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    table[state_dict[IDS_KEY].long()] = rows
    out = {k: v for k, v in state_dict.items() if k != IDS_KEY}
    out[TOKEN_KEY] = table
    return out
