# %% [markdown]
# # Find a circuit
#
# Which components carry a prediction, along which paths, and do they suffice? Four tools, from the
# coarsest to the most causal:
#
# 1. **direct logit attribution** splits the final logit difference over every head and MLP;
# 2. **edge attribution** (EAP-IG) scores every edge between components with gradients, in one folded
#    forward and backward;
# 3. **faithfulness** runs a circuit made of the best edges, every other edge ablated, and measures how
#    much of the behaviour it keeps;
# 4. **distributed alignment search** (DAS) asks whether a variable, here the country, lives in a linear
#    subspace of one site, by training that subspace with interchange interventions.

# %%
import os
import random

import mlx.core as mx
import numpy as np

import mlxterp as mt
from mlxterp import InterpretableModel

model = InterpretableModel(os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m"))
n_layers = len(model.layers)
print(model)

# %% [markdown]
# ## 1. Direct logit attribution
#
# At the last position of "The capital of France is", how much does each component write in the direction
# of " Paris" minus " Rome" (the Italian prompt's answer)? The final norm's scale is frozen at this run's
# value, so the contributions add up to the model's logit difference; `dla.error` is what belongs to no
# component.

# %%
prompt = "The capital of France is"
with model.trace([prompt, "The capital of Italy is"], capture="saved"):
    logits = model.output[:, -1].save()
target, foil = (int(i) for i in logits.argmax(axis=-1).tolist())
if foil == target:  # a tiny model may answer both prompts alike: then compare with its runner-up
    foil = int(mx.argsort(logits[0])[-2])
dla = model.direct_logit_attribution(prompt, target=target, foil=foil)
print(f"logit difference {model.token_to_str(target)!r} - {model.token_to_str(foil)!r}: {dla.logit_diff:.2f}, "
      f"sum of components {dla.total:.2f}, error {dla.error:.1e}")
for name, value in dla.top(5):
    print(f"  {name:>24}: {value:+.2f}")
dla.plot(save_path="dla.png")

# %% [markdown]
# ## 2. Edge attribution on the induction task
#
# A task with a known answer: random tokens, repeated, so the last token's successor can be read from the
# first copy. The corrupted prompt replaces that successor's first occurrence; the metric is the
# log-probability of the repeated token. Senders are the embedding, every head and every MLP; receivers are
# every head's query, key and value inputs, every MLP and the logits.

# %%
rng = np.random.default_rng(0)
lo, hi = min(1000, model.vocab_size // 10), min(10000, model.vocab_size - 1)  # ordinary tokens
first = [int(t) for t in rng.integers(lo, hi, 10)]
bos = [model.tokenizer.bos_token_id] if model.tokenizer.bos_token_id is not None else []
clean = mx.array([bos + first + first[:-1]])  # predicts first[-1] at the last position
corrupted = mx.array([bos + first[:-1] + [int(rng.integers(lo, hi))] + first[:-1]])

edges = model.edge_attribution(clean, corrupted, metric="logprob", target=first[-1], method="eap-ig", steps=5)
print(edges)
for sender, receiver, score in edges.top(8):
    print(f"  {sender:>22} -> {receiver:<26} {score:+.2f}")

# %% [markdown]
# ## 3. Is it a circuit? Faithfulness
#
# Keep the best `n` edges and ablate every other one (it carries its value from the corrupted run):
# faithfulness is the share of the gap between the corrupted run (0) and the full model (1) that the
# circuit recovers. The curve runs every size as a block of rows of one batched forward.

# %%
sizes = [n for n in (10, 50, 200, 1000, 5000) if n <= edges.graph.n_edges]
curve = model.faithfulness_curve(edges, clean, corrupted, sizes=sizes, metric="logprob", target=first[-1])
curve.plot(save_path="faithfulness.png")
for n, f in zip(curve.sizes, curve.faithfulness):
    print(f"  best {n:>5} of {edges.graph.n_edges} edges: faithfulness {f:.2f}")

# %% [markdown]
# Which heads does the circuit go through? Count, for each head, the kept edges that leave or enter it.

# %%
circuit = edges.circuit(n_edges=200)
heads = {}
for sender, receiver, _ in edges.top(200):
    for node in (sender, receiver):
        if ".heads." in node:
            head = ".".join(node.split(".")[:5])  # layers.L.attn.heads.H
            heads[head] = heads.get(head, 0) + 1
print("heads on the most edges of the 200-edge circuit:", sorted(heads.items(), key=lambda kv: -kv[1])[:6])
faith = model.evaluate_circuit(circuit, clean, corrupted, metric="logprob", target=first[-1])
print(f"its faithfulness, evaluated alone: {faith.faithfulness:.2f}")

# %% [markdown]
# ## 4. Where is the country? Distributed alignment search
#
# Back to capitals. If a subspace of the residual stream at the country's token holds "which country",
# then copying its coordinates from a source prompt ("...Japan...") into a base prompt ("...France...")
# should make the model answer with the source's capital. DAS trains such a subspace (an orthonormal basis
# of `dim` directions, kept exactly orthonormal) on (base, source) pairs, and interchange-intervention
# accuracy (IIA) on held-out pairs says how often the swap works.

# %%
capitals = {"France": " Paris", "Italy": " Rome", "Greece": " Athens", "Japan": " Tokyo", "China": " Beijing",
            "Canada": " Ottawa"}
pairs = [(b, s) for b in capitals for s in capitals if b != s]  # 30 (base, source) pairs
random.Random(0).shuffle(pairs)
base = [f"The capital of {b} is" for b, _ in pairs]
source = [f"The capital of {s} is" for _, s in pairs]
labels = [model.encode(capitals[s])[-1] for _, s in pairs]  # the answer if the subspace carries the country

site = f"layers.{max(1, n_layers // 7)}.resid_post"  # an early layer: 4 of 30 on the default model
das = mt.DAS(site, position=-2, dim=64)  # -2: the country token (the last token is " is")
losses = das.train(model, base[:24], source[:24], labels[:24], steps=4, batch_size=6)
print(f"{das}: loss {losses[0]:.2f} -> {losses[-1]:.2f}; "
      f"held-out IIA {das.iia(model, base[24:], source[24:], labels[24:]):.2f}")

acts = das.source_activations(model, ["The capital of Japan is"])
with model.trace("The capital of France is", interventions={das.site: das.intervention(acts)}):
    swapped = model.output[:, -1].save()
print("France, with Japan's country subspace:", repr(model.token_to_str(swapped[0].argmax().item())))
