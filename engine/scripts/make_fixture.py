#!/usr/bin/env python3
"""Makes engine/tests/fixtures/tiny-gpt2: a small randomly initialised GPT2LMHeadModel saved by
`transformers` (config.json + model.safetensors, names under `transformer.`), and
reference.json with its last-position logits and greedy continuations for a few token-id
prompts. The Rust fidelity test loads it through the engine's real loading path.

Reproducible: fixed seed, CPU, float32, eager attention.
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers safetensors
    /tmp/torchenv/bin/python engine/scripts/make_fixture.py
"""
import json
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tiny-gpt2")
NEW_TOKENS = 12

torch.manual_seed(1234)
config = GPT2Config(
    vocab_size=1000,  # a small vocabulary keeps the fixture well under 2 MB
    n_positions=64,
    n_embd=64,
    n_layer=2,
    n_head=4,
    bos_token_id=999,
    eos_token_id=999,
    attn_implementation="eager",
)
model = GPT2LMHeadModel(config).eval()
# GPT-2's own init (std 0.02, zero biases, unit layer norms) gives nearly flat logits and would
# leave biases and norm gains untested: draw every parameter so all of them matter and greedy
# choices have clear margins.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn_like(p))
        else:
            p.copy_(0.25 * torch.randn_like(p))

g = torch.Generator().manual_seed(99)
prompts = [
    torch.randint(0, 999, (n,), generator=g).tolist() for n in (1, 5, 17, 40)
]

records = []
with torch.no_grad():
    for prompt in prompts:
        ids = torch.tensor([prompt])
        last = model(ids).logits[0, -1]
        seq = list(prompt)
        greedy, margins = [], []
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([seq])).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(logits))
            if nxt == config.eos_token_id:
                break
            greedy.append(nxt)
            seq.append(nxt)
        # A near tie could flip under float reordering and make the test flaky.
        assert min(margins) > 1e-3, margins
        records.append({"prompt": prompt, "last_logits": [round(float(x), 7) for x in last], "greedy": greedy})

os.makedirs(OUT, exist_ok=True)
model.save_pretrained(OUT, safe_serialization=True)
with open(os.path.join(OUT, "reference.json"), "w") as f:
    json.dump(
        {
            "torch": torch.__version__,
            "new_tokens": NEW_TOKENS,
            "eos_token_id": config.eos_token_id,
            "cases": records,
        },
        f,
    )
for name in os.listdir(OUT):
    print(name, os.path.getsize(os.path.join(OUT, name)))
