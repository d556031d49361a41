"""GPT-2 style layers (``h = x + attn(ln_1(x)); out = h + mlp(ln_2(h))``) under ``h``, with ``wte``/``ln_f``:
GPT-2 and GPTBigCode (learned absolute positions ``wpe``: no position past its rows exists) and EXAONE
(rotary; its attention is ``attn.attention``: ``attn`` is a container that is never called).
"""

from __future__ import annotations

from .base import learned
from .llama import family

_GPT2 = dict(attn="attn", mlp="mlp", ln1="ln_1", ln2="ln_2")

ARCHITECTURES = {
    "gpt2": family("gpt2", embed="model.wte", layers="model.h", final_norm="model.ln_f", head=None,
                   positions=learned("model.wpe"), **_GPT2),
    "gpt_bigcode": family("gpt_bigcode", embed="transformer.wte", layers="transformer.h",
                          final_norm="transformer.ln_f", positions=learned("transformer.wpe"), **_GPT2),
    "exaone": family("exaone", embed="transformer.wte", layers="transformer.h", final_norm="transformer.ln_f",
                     **dict(_GPT2, attn="attn.attention")),
}
