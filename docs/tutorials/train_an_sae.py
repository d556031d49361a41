# %% [markdown]
# # Train and read a sparse autoencoder
#
# A sparse autoencoder (SAE) rewrites a layer's residual stream as a sparse sum of learned directions, its
# *features*. Here we train a small TopK SAE live on the model's own forwards, measure how much of the
# layer it explains and what splicing it in costs the model, read one feature (the contexts where it fires
# hardest, the tokens it promotes, its page), steer a generation with it, and finally read the residual
# stream through a tuned lens beside the logit lens.
#
# Everything is kept small so that the page runs in under a minute on a 2-core CPU: a 2,304-latent SAE
# trained on 8,192 tokens (about eight passes over 74 template sentences). Such an SAE is weak (see the
# numbers below and, for an SAE trained on millions of tokens of real text, the guide's
# [quality section](../guide/features.md#quality-on-the-default-model) and
# [benchmarks/README.md](../benchmarks.md)); the workflow is the same at any size.

# %%
import os

import mlx.core as mx
import numpy as np

import mlxterp as mt
from mlxterp import InterpretableModel

model = InterpretableModel(os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m"))
layer = len(model.layers) // 5  # an early-middle layer: 6 of 30 on the default model
site = f"layers.{layer}.resid_pre"

countries = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Canada", "Ottawa")]
names = ["Alice", "Bob", "Maria", "Kenji", "Omar", "Lena"]
foods = ["apples", "bread", "cheese", "coffee", "rice", "tomatoes"]
moods = [("loved", "wonderful"), ("enjoyed", "delightful"), ("hated", "terrible"), ("disliked", "boring")]
prompts = ([f"The capital of {c} is {city}, a city of museums and old streets." for c, city in countries]
           + [f"{n} bought {i + 2} kilos of {f} at the market on Monday." for i, (n, f) in
              enumerate((n, f) for n in names for f in foods)]
           + [f"{n} {verb} the film; the acting was {adj} and the music too." for n in names for verb, adj in moods]
           + [f"def {f}_total(items):\n    return sum(x.{f} for x in items)" for f in foods])
heldout = ([f"Last year {n} visited {city}, the capital of {c}." for n, (c, city) in zip(names, countries)]
           + [f"{n} said the book was {adj}." for n, (_, adj) in zip(names, moods * 2)])
print(model, f"\nSAE at {site}; {len(prompts)} training prompts, {len(heldout)} held out")

# %% [markdown]
# ## Train a TopK SAE live
#
# `mt.train` runs the model on the prompts (stopped after the SAE's site), keeps every token's residual as
# a row, and fits the SAE with one compiled step per batch. TopK (Gao et al. 2024) keeps the `k` largest
# pre-activations of each token, so L0 is `k` by construction; the history shows the fraction of variance
# explained (FVE) still rising when the run ends: more tokens would help. SmolLM2 has no BOS token and its
# first token is an attention sink whose residual is ~100x larger than every other token's, so
# `skip_positions=1` leaves it out. (The run's `dead` fraction counts latents silent for `dead_tokens`, 10M
# tokens by default: a run this short cannot flag any.)

# %%
sae = mt.SAE.create("topk", d_sae=2304, k=16, site=site)
run = mt.train(sae, model=model, prompts=prompts, tokens=8192, batch_size=256, lr=1e-3, skip_positions=1,
               progress=False)
print(run)
fve = run.history[0]["fve"]
print("FVE over training:", " ".join(f"{v:.2f}" for v in fve[:: max(1, len(fve) // 8)]))
run.plot(save_path="training.png", metrics=("fve", "loss"))

# %% [markdown]
# ## Evaluate it on held-out prompts
#
# Training FVE is measured on the batches the SAE learns from; `mt.evaluate` measures it on prompts it
# never saw, and splices it into the model to see what the reconstruction costs the next-token loss:
# `ce_recovered` is 1 when the model with the SAE's reconstruction in place of the layer predicts as well
# as the clean model, 0 when it does no better than with the layer zeroed. All of it is one batched
# program per chunk of prompts (clean, spliced and zero-ablated rows side by side).
#
# Read these numbers as those of a toy. `mt.evaluate` counts every token, the first one too, which the SAE
# never saw in training (the attention sink), and that token alone pulls the held-out FVE and CE-loss
# recovered down; a dead fraction over ~100 held-out tokens mostly says how few tokens there are. For an SAE
# trained on millions of tokens of real text, see the guide's
# [quality section](../guide/features.md#quality-on-the-default-model).

# %%
report = mt.evaluate(model, [sae], heldout)
print(report)
row = report[0]
print(f"held-out FVE {row['fve']:.2f}, CE-loss recovered {row['ce_recovered']:.2f}, "
      f"{row['dead']:.0%} of the features never fire on these {row['tokens']} tokens")

# %% [markdown]
# ## Find a feature
#
# With `dictionaries=[sae]` the SAE is spliced into a trace and its features are a traced value,
# `h.sae.features` `(batch, seq, d_sae)`. Reading them at the last token of positive and negative phrases,
# the feature whose mean differs most is a candidate "positive word" feature.

# %%
positive = ["The film was wonderful", "The food was delightful", "We loved the wonderful day", "What a delightful song"]
negative = ["The film was terrible", "The food was boring", "We hated the terrible day", "What a boring song"]
with model.trace(positive + negative, dictionaries=[sae]):
    last = model.layers[layer].resid_pre.sae.features[:, -1].save()  # (8, d_sae): every phrase's last token
last = np.array(last)
difference = last[: len(positive)].mean(axis=0) - last[len(positive):].mean(axis=0)
feature = int(difference.argmax())
print(f"feature {feature}: mean activation {last[:len(positive), feature].mean():.2f} on the positive phrases, "
      f"{last[len(positive):, feature].mean():.2f} on the negative ones")

# %% [markdown]
# ## Where it fires, and what it writes
#
# `top_contexts` runs the prompts again (stopped at the SAE's site) and keeps, for each feature asked, the
# contexts where it is most active, every feature's firing density, and the feature's logit effects: its
# decoder direction read through the final norm and unembedding, as the logit lens reads a residual. Read
# the logit effects with care: this is the *direct* path from layer 6 to the logits, which skips everything
# the 24 later layers do with the direction, so for an early-layer feature they are mostly noise.

# %%
ctx = mt.features.top_contexts(model, sae, prompts + heldout, features=[feature], k=5, logits=8)
print(ctx)
for c in ctx.top(feature):
    print(f"{c['activation']:6.2f}  {c['text']!r}")
effects = ctx.effects.top(feature)
print("promotes:", [t for t, _ in effects["promoted"]], "\nsuppresses:", [t for t, _ in effects["suppressed"]])

# %% [markdown]
# The feature page shows it all in one self-contained file: each context with its tokens coloured by the
# feature's activation (hover for the values), where this feature's density sits among all the features',
# and its logit effects.

# %%
ctx.save_html("feature.html", feature=feature)

# %% [markdown]
# ## Steer with the feature
#
# A write to `h.sae.features` inside `model.generate` makes the site the decoding of the edited features
# plus the SAE's error term, at every generated token. Three rows of one batch set the feature at the
# newest token to 0, 2 and 4 times its largest activation in the contexts above (0 removes it; the other
# features and the error term are left as they are). Expect little subtlety from a feature of a weak SAE:
# its direction mixes what it stands for with whatever else the short training folded into it, and pushed
# far past its range any direction degrades the text.

# %%
prompt = "I think that you are"
peak = float(ctx.top(feature, 1)[0]["activation"])
strengths = mx.array([0.0, 2.0, 4.0]) * peak
with model.generate([prompt] * 3, max_new_tokens=16, dictionaries=[sae]) as gen:
    model.layers[layer].resid_pre.sae.features[:, -1, feature] = strengths  # one value per row
for s, text in zip(strengths.tolist(), gen.text):
    print(f"feature {feature} = {s:5.1f}: {prompt}{text}".replace("\n", " "))

# %% [markdown]
# ## A tuned lens beside the logit lens
#
# The logit lens reads a layer's residual through the final norm and unembedding as if it were the last
# layer's. A tuned lens (Belrose et al. 2023) first passes it through an affine translator per layer,
# trained so that the readout matches the model's own final distribution. Here two translators are
# trained on 256 tokens of the training prompts (a few seconds per translator here), then evaluated on the
# held-out ones: KL to the model's final distribution and next-token cross-entropy, both lenses, in nats.
# The held-out prompts are the same templates with other words, which flatters the lens; on real text see
# the benchmarks (4,096 training tokens of documentation: below the logit lens at every layer of this model,
# by 2-5x in KL). The view shows both lenses side by side, layers by positions.

# %%
n = len(model.layers)
shown = sorted({n // 2, 2 * n // 3, n - 1})
lens = mt.TunedLens.train(model, prompts, tokens=256, batch_size=64, layers=shown[:-1], progress=False)
print(lens)
print(lens.evaluate(model, heldout).table())

question = "The capital of France is"
plain = model.logit_lens(question, top_k=3, layers=shown)
tuned = model.logit_lens(question, top_k=3, layers=shown, lens=lens)
for layer_, a, b in zip(shown, plain.values(), tuned.values()):
    print(f"layer {layer_:>2}, last token: logit lens {a[-1][0][2]!r:>12}  tuned lens {b[-1][0][2]!r:>12}")
plain.save_html("lens_vs_tuned.html", compare=tuned)
