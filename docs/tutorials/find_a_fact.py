# %% [markdown]
# # Find where a fact is stored
#
# SmolLM2-135M completes "The capital of France is" with " Paris". Where, inside its 30 layers, does
# " Paris" come from? Three tools answer at three levels of detail:
#
# 1. the **logit lens** shows from which layer on the residual stream already predicts " Paris";
# 2. **activation patching** finds which layers' outputs carry the fact: run the model on a corrupted
#    prompt ("Italy") and copy one layer's output from the clean run ("France") into it;
# 3. a **layers x positions grid** says at which token, and where in the depth, the information flows.
#
# The model is read from `MLXTERP_TUTORIAL_MODEL` (default: the default model), so the test suite runs
# this script on a tiny model too.

# %%
import os

import numpy as np

from mlxterp import InterpretableModel

model = InterpretableModel(os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m"))
clean, corrupted = "The capital of France is", "The capital of Italy is"
n_layers = len(model.layers)

with model.trace([clean, corrupted], capture="saved") as tr:
    logits = model.output[:, -1].save()  # (2, vocab): the last position of each prompt
answer, other = (int(i) for i in logits.argmax(axis=-1).tolist())
print(model, f"\nclean -> {model.token_to_str(answer)!r}, corrupted -> {model.token_to_str(other)!r}")

# %% [markdown]
# ## 1. The logit lens
#
# Each layer's output goes through the final norm and the unembedding, as if the model stopped there.
# The view below shows every layer at every position (hover a cell for its top 5); here we read the last
# position, where the answer is predicted.

# %%
lens = model.logit_lens(clean, top_k=5)
lens.save_html("lens.html")

answer_rank = [(lens.ids[i, -1] == answer).argmax() if (lens.ids[i, -1] == answer).any() else None
               for i in range(n_layers)]
first = next(layer for layer in range(n_layers) if all(r == 0 for r in answer_rank[layer:]))
print(f"{model.token_to_str(answer)!r} is the top prediction from layer {first} of {n_layers} on")
for layer in sorted(set(range(0, n_layers, 4)) | set(range(max(0, first - 3), n_layers))):
    top = ", ".join(f"{lens.strings[int(i)]!r} {p:.2f}" for i, p in zip(lens.ids[layer, -1, :3], lens.probs[layer, -1, :3]))
    print(f"layer {layer:2d}: {top}")

# %% [markdown]
# ## 2. Which layers carry the fact?
#
# Activation patching runs the corrupted prompt and replaces one component's output at one layer with its
# value from the clean run. The metric is the log-probability of the clean answer (" Paris") at the last
# position; the score is the share of the clean-vs-corrupted gap a patch recovers (100%: the patch alone
# restores it). mlxterp runs the clean prompt once and every patched variant as rows of batched,
# compiled forwards.

# %%
recovery = {}
for component in ("mlp", "attn"):
    recovery[component] = model.activation_patching(clean, corrupted, component=component, metric="logprob",
                                                     target=answer)
    best = sorted(recovery[component].items(), key=lambda kv: -kv[1])[:3]
    print(f"{component:>6}: " + ", ".join(f"layer {layer} {value:+.0f}%" for layer, value in best))
recovery["mlp"].save_html("mlp_patching.html")

# %% [markdown]
# A component that scores near 100% alone carries what the two prompts' difference does to the answer.
# To see *where*, in positions, that information sits at each depth, patch one position at a time.
#
# ## 3. Layers x positions
#
# `patching_grid` patches each layer's output at one position: every (layer, position) cell is a row of
# one batched sweep.

# %%
grid = model.patching_grid(clean, corrupted, metric="logprob", target=answer)
grid.plot(save_path="grid.png")
grid.save_html("grid.html")

differ = [i for i, (a, b) in enumerate(zip(model.encode(clean), model.encode(corrupted))) if a != b]
country, last = differ[-1], grid.grid.shape[1] - 1  # the (last) position where the prompts differ
handover = next((i for i in range(n_layers) if grid.grid[i, last] > grid.grid[i, country]), n_layers - 1)
print(f"the prompts differ at position {country} ({grid.position_labels[country]!r})")
print(f"patching the country token recovers {grid.grid[0, country]:.0f}% at layer 0, "
      f"{grid.grid[handover, country]:.0f}% at layer {handover}")
print(f"from layer {handover} on, the last position carries more: {grid.grid[handover, last]:.0f}% "
      f"(layer {n_layers - 1}: {grid.grid[-1, last]:.0f}%)")

# %% [markdown]
# The fact travels from the country's token to the last token between these layers: attention moves it,
# and the layers after that build the answer at the last position.
#
# ## A faster estimate: attribution patching
#
# Attribution patching estimates the whole grid from one forward and one backward pass (a first-order
# Taylor expansion around the corrupted run). It is cheap enough for every component of a large model;
# check it against the exact grid before trusting it.

# %%
approx = model.attribution_patching(clean, corrupted, metric="logprob", target=answer)
r = np.corrcoef(approx.grid.ravel(), grid.grid.ravel())[0, 1]
print(f"correlation with the exact grid: {r:.2f}")
approx.plot(save_path="attribution.png")
