# %% [markdown]
# # Find induction heads
#
# An induction head completes patterns: at a token `A` that occurred before, followed by `B`, it attends
# to that earlier `B` and copies it (`... A B ... A -> B`). Language models grow them early in training,
# and they account for much of in-context learning. Here we find them in the default model, look at their
# attention, and check that removing them breaks copying while removing other heads does not.

# %%
import os

import mlx.core as mx
import numpy as np

from mlxterp import InterpretableModel
from mlxterp import interventions as iv

model = InterpretableModel(os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m"))
n_layers = len(model.layers)
print(model)

# %% [markdown]
# ## Score every head
#
# `head_scores` runs sequences of random tokens repeated once, in one batched forward, and scores each
# head by its attention pattern: **induction** (attention from the second copy of a token to the token
# after its first copy), **previous-token** and **duplicate-token** (to the first copy itself).

# %%
scores = model.head_scores(seq_len=24, batch=4)
scores.plot(save_path="head_scores.png")
top = scores.top("induction", 6)
for layer, head, score in top:
    print(f"layer {layer:2d} head {head}: induction {score:.2f}")

# %% [markdown]
# ## Look at one
#
# The attention pattern of the best head on a repeated sequence of random tokens: in the second half, each
# query attends to the key one position after the same token's first occurrence, an off-diagonal stripe.
# Hover the view for each weight.

# %%
rng = np.random.default_rng(0)
lo, hi = min(1000, model.vocab_size // 10), min(10000, model.vocab_size - 1)  # ordinary tokens
half = [int(t) for t in rng.integers(lo, hi, 12)]
bos = getattr(model.tokenizer, "bos_token_id", None)
tokens = ([bos] if bos is not None else []) + half + half
best_layer, best_head, _ = top[0]
patterns = model.attention_patterns(tokens, layers=[best_layer])
patterns.save_html("patterns.html", layer=best_layer, head=best_head)
offset = len(tokens) - 2 * len(half)
stripe = [patterns[best_layer][best_head, offset + len(half) + i, offset + i + 1] for i in range(len(half) - 1)]
print(f"layer {best_layer} head {best_head}: mean attention on the induction stripe {np.mean(stripe):.2f}")

# %% [markdown]
# ## Ablate them
#
# If these heads do the copying, zeroing their outputs should raise the loss on the second copy, where
# every token is predictable from the first. A control ablates as many other heads of the same layers,
# chosen at random. `model.edit` gives a model that carries the ablation in every trace; the base model is
# untouched.

# %%
def second_copy_loss(m: InterpretableModel) -> float:
    """Mean cross-entropy (nats) of the second copy's tokens, each predicted from the one before."""
    ids = mx.array([tokens])
    with m.trace(ids, capture="saved"):
        logits = m.output.save()
    # The second copy's first token is not predictable; each later one is, from the position before it.
    start = offset + len(half) + 1
    logprobs = logits[0, start - 1:-1] - mx.logsumexp(logits[0, start - 1:-1], axis=-1, keepdims=True)
    targets = mx.array(tokens[start:])
    return float(-mx.take_along_axis(logprobs, targets[:, None], axis=-1).mean())


def ablated(heads):
    by_layer = {}
    for layer, head, _ in heads:
        by_layer.setdefault(layer, []).append(head)
    return model.edit({f"layers.{layer}.attn.heads": iv.zero_out_heads(hs) for layer, hs in by_layer.items()})


chosen = {(layer, head) for layer, head, _ in top}
others = [(layer, head, 0.0) for layer in sorted({layer for layer, _ in chosen})
          for head in range(scores.induction.shape[1]) if (layer, head) not in chosen]
control = [others[i] for i in rng.choice(len(others), size=min(len(top), len(others)), replace=False)]
print(f"loss on the second copy: {second_copy_loss(model):.2f} nats")
print(f"  {len(top)} induction heads ablated: {second_copy_loss(ablated(top)):.2f} nats")
print(f"  {len(control)} other heads of the same layers ablated: {second_copy_loss(ablated(control)):.2f} nats")

# %% [markdown]
# Removing the induction heads costs the model much of its ability to copy; removing as many other heads
# costs little. Next: [find the circuit](find_a_circuit.md) these heads belong to, edge by edge.
