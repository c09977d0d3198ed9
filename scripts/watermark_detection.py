"""SmolLM2-135M-Instruct: structured-output overhead + validity, watermark detection rates."""
import json, sys, time
import torch
torch.set_num_threads(1)
from tokenmill import AutoModelForCausalLM
from tokenmill.tokenizer import Tokenizer
from tokenmill.loading.default_model import default_model_path
from tokenmill.generation.constrained import StructuredOutputProcessor
from tokenmill.generation.watermark import WatermarkDetector, WatermarkingConfig

path = default_model_path()
model = AutoModelForCausalLM.from_pretrained(path)
tok = Tokenizer.from_gguf(path)
V = model.config.vocab_size
eos = tok.eos_token_id

def chat(text):
    return torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                             add_generation_prompt=True), add_special_tokens=False)])

# ---- watermark ----
topics = ["the ocean", "a city at night", "learning to cook", "mountains", "a rainy day", "old books", "trains",
          "coffee", "the moon", "gardening", "music", "winter", "a small village", "the desert", "friendship",
          "computers", "a river", "birds", "the market", "a long journey"]
prompts = [tok.apply_chat_template([{"role": "user", "content": f"Write a short paragraph about {t}."}], tokenize=False,
                                   add_generation_prompt=True) for t in topics]
tok.padding_side = "left"
enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
common = dict(attention_mask=enc["attention_mask"], do_sample=True, temperature=0.7, max_new_tokens=80, eos_token_id=None)
config = WatermarkingConfig()  # transformers' defaults: ratio 0.25, bias 2.0, lefthash
detector = WatermarkDetector(V, bos_token_id=None, watermarking_config=config)
for name, extra in (("watermarked", dict(watermarking_config=config)), ("plain", {})):
    torch.manual_seed(1)
    s = time.perf_counter()
    out = model.generate(enc["input_ids"], **common, **extra)[:, enc["input_ids"].shape[1]:]
    result = detector(out, z_threshold=4.0, return_dict=True)
    print(f"{name}: {time.perf_counter()-s:.0f}s detected {int(result.prediction.sum())}/{len(topics)} at z>4; "
          f"z mean {result.z_score.mean():.2f} min {result.z_score.min():.2f} max {result.z_score.max():.2f}; "
          f"green fraction mean {result.green_fraction.mean():.3f}", flush=True)
    print("  z:", [round(float(z), 2) for z in result.z_score], "detected at z>3:", int((result.z_score > 3).sum()), flush=True)
    print("  sample:", repr(tok.decode(out[0], skip_special_tokens=True)[:160]), flush=True)
