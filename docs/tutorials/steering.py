# %% [markdown]
# # Steer a generation
#
# Add a direction to the residual stream at every generated token and the model's continuations change in
# that direction. Here the direction is "love minus hate", read from contrasting prompts; we generate with
# it at several strengths in one batch, watch it act token by token, and measure its effect on the next
# token with a scan of 9 strengths in one forward.

# %%
import os

import mlx.core as mx

import mlxterp as mt
from mlxterp import InterpretableModel
from mlxterp import interventions as iv
from mlxterp.views.generation import token_probabilities

model = InterpretableModel(os.environ.get("MLXTERP_TUTORIAL_MODEL", "smollm2-135m"))
layer = len(model.layers) * 2 // 5  # a middle layer: 12 of 30 on the default model
prompt = "I think that you are"
print(model, f"\nsteering at layer {layer}")

# %% [markdown]
# ## A steering vector
#
# `steering_vector` is the mean difference of a layer's output at the last token between two sets of
# prompts.

# %%
love = model.steering_vector(["I love you", "We loved the wonderful day", "This is great"],
                             ["I hate you", "We hated the terrible day", "This is awful"], layer=layer)
print(love.shape, love.dtype, f"norm {float(mx.linalg.norm(love)):.1f}")

# %% [markdown]
# ## Generate at three strengths in one batch
#
# Each row of the batch gets its own multiple of the vector (0 is the baseline); `iv.add_vector` adds it at
# every position of the prompt and at every new token. Greedy decoding, so the rows differ only by the
# steering.

# %%
alphas = mx.array([0.0, 2.0, 4.0])[:, None, None]
gen = model.generate([prompt] * 3, max_new_tokens=16, interventions={f"layers.{layer}": iv.add_vector(alphas * love)})
for alpha, text in zip([0, 2, 4], gen.text):
    print(f"alpha {alpha}: {prompt}{text}".replace("\n", " "))

# %% [markdown]
# ## Token by token
#
# Inside a `with model.generate(...)` block, reads and writes apply at every decode step: here the
# steering is a write at the newest token, and two saves record, at each step, how far the residual
# stream points along the vector and the logits the new token was chosen from. The view colours each
# new token by the probability it had.

# %%
unit = love / mx.linalg.norm(love)
with model.generate(prompt, max_new_tokens=16) as steered:
    h = model.layers[layer].output[:, -1]
    model.layers[layer].output[:, -1] = h + 2.0 * love
    (model.layers[layer].output[:, -1] @ unit).save("along")  # one number per step
    model.output[:, -1].save("logits")
along = steered.saved_values["along"]  # (steps, 1): one value per step, stacked
print(prompt + steered.text)
print("projection on the vector, step by step:", [round(float(v), 1) for v in along.reshape(-1)])
steered.save_html("steered.html", values=token_probabilities(steered.result(), "logits"), label="p(token)")

# %% [markdown]
# ## A scan over strengths as one program
#
# How does the next token's distribution move with the strength? Record the intervention once with the
# strength as a named param, then run 9 values as 9 rows of one forward (`prog.batched`): no retracing,
# no Python loop of forwards. The score is the log-probability of " love"-ish continuations minus
# " hate"-ish ones.

# %%
positive = [model.encode(w)[-1] for w in (" wonderful", " great", " amazing")]
negative = [model.encode(w)[-1] for w in (" terrible", " awful", " horrible")]
with model.trace(prompt, capture="saved") as tr:
    alpha = mt.param("alpha", 0.0)
    model.layers[layer].output = model.layers[layer].output + alpha * love
    logits = model.output[:, -1]
    logprobs = logits - mt.apply(mx.logsumexp, logits, axis=-1, keepdims=True)
    (logprobs[:, positive].mean(axis=-1) - logprobs[:, negative].mean(axis=-1)).save("sentiment")
prog = tr.program()
strengths = mx.linspace(-4.0, 4.0, 9)
sentiment = prog.batched(alpha=strengths)["sentiment"].reshape(-1)
for a, s in zip(strengths.tolist(), sentiment.tolist()):
    print(f"alpha {a:+.0f}: {s:+.2f} " + "#" * max(0, int(round(2 * (s - float(sentiment.min()))))))
print("compiled traces:", model.compile_stats()["traces"])
