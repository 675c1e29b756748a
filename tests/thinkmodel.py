"""A tiny llama model that thinks, then answers, with fixed text: for the reasoning tests.

Greedy decoding after a prompt that opened `<think>` gives REASONING's pieces, `</think>`, the
answer's pieces, then `<|im_end|>`; after a plain assistant header it first opens `<think>`
itself; after a closed `<think>\\n\\n</think>` (thinking switched off) it gives only the answer.
Each piece is one added token. As in tests/toolmodel.py, the blocks add nothing (zero
`o_proj`/`down_proj`), so the final hidden state is the last token's one-hot embedding (scaled
to 4 by the norm), and the untied `lm_head` maps each piece's axis to its successor: every step
has a 40-logit margin but one, the step after the second reasoning piece, which has 10 — so a
`logit_bias` of WEAK_STEP_BIAS on `</think>` ends the reasoning exactly there and nowhere else.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tinymodel import make_tiny_model, write_thinking_tokenizer
from toolmodel import MARKERS

REASONING = ["Hmm,", " the user", " asks", " about Paris."]
ANSWER = ["Paris", " is the capital."]
STRONG = 10.0  # lm_head entry of a chain step: a 40-logit margin
WEAK = 2.5  # the step after REASONING[1]: a 10-logit margin
#: a logit_bias on `</think>` between the weak and the strong margins
WEAK_STEP_BIAS = 25


def make_thinking_chain_model(folder: Path, *, answer: list[str] = ANSWER) -> Path:
    """Write the model folder; `answer` is the pieces after `</think>` (say, a tool call's).
    Runs mlx on the calling thread."""
    import mlx.core as mx
    import numpy as np
    from transformers import PreTrainedTokenizerFast

    pieces = [*REASONING, *answer]
    if len(set(pieces)) != len(pieces):
        raise ValueError(f"the pieces repeat: {pieces}")
    make_tiny_model(
        folder,
        hidden=16,
        layers=1,
        context=4096,
        tokenizer=lambda target: write_thinking_tokenizer(target, pieces=[*MARKERS, *pieces]),
    )
    fast = PreTrainedTokenizerFast.from_pretrained(str(folder))
    start, end = (fast.convert_tokens_to_ids(m) for m in ("<think>", "</think>"))
    ids = [fast.convert_tokens_to_ids(p) for p in pieces]
    chain = [start, *ids[: len(REASONING)], end, *ids[len(REASONING) :], fast.eos_token_id]
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    weights = dict(mx.load(str(folder / "model.safetensors")))
    for key, value in weights.items():
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            weights[key] = mx.zeros_like(value)  # the blocks add nothing to the residual stream
    vocab, hidden = weights["model.embed_tokens.weight"].shape
    embed = np.zeros((vocab, hidden), dtype=np.float32)
    embed[:, 0] = 1.0  # any other token: axis 0
    head = np.zeros((vocab, hidden), dtype=np.float32)
    head[start, 0] = STRONG  # any other token -> `<think>`
    for axis, (token, successor) in enumerate(itertools.pairwise(chain), start=1):
        embed[token] = 0.0
        embed[token, axis] = 1.0
        head[successor, axis] = WEAK if token == ids[1] else STRONG
    weights["model.embed_tokens.weight"] = mx.array(embed)
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return folder
