"""llama.cpp's convert_hf_to_gguf.py for a locally built SmolVLM2 checkpoint's text model (benchmarks only).

Run from llama.cpp's source folder: `python /path/to/benchmarks/llamacpp_convert.py CKPT --outfile text-f16.gguf
--outtype f16`. Two differences from the hub's checkpoints make the converter go wrong, and both are set here:
the text vocabulary is read as GPT-2 BPE (its llama-HF fallback writes a SentencePiece vocabulary that mtmd cannot
tokenize: "unordered_map::at"), and the pre-tokenizer is named SmolLM's (the locally built tokenizer.json hashes
differently from the hub's, which llama.cpp lists). The checkpoint's config.json needs
text_config.architectures = ["VLlama3ForCausalLM"], as the hub's has.
"""

import runpy
import sys

sys.path[:0] = ["gguf-py", "."]
from conversion import base, llama  # noqa: E402  (llama.cpp's own package, from the current folder)

llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "smollm"
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[1:]
runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
