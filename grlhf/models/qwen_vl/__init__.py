"""Flax NNX Qwen2-VL and Qwen2.5-VL with PyTorch parity.

    model = from_pretrained("path/to/hf_dir")          # safetensors, sharded or not, fp32 or bf16
    logits = model(**processor_outputs)                 # input_ids, attention_mask, mm_token_type_ids, ...
    save_pretrained(model, "out_dir")                   # loads in transformers and vLLM unchanged
"""

from grlhf.models.qwen_vl.checkpoint import from_pretrained, load_orbax, save_orbax, save_pretrained
from grlhf.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig
from grlhf.models.qwen_vl.inputs import ModelInputs, prepare_inputs
from grlhf.models.qwen_vl.model import QwenVLForConditionalGeneration
from grlhf.models.qwen_vl.sharding import constrain, create_sharded, make_mesh
from grlhf.models.qwen_vl.vision import VisionInputs

__all__ = [
    "ModelInputs",
    "QwenVLConfig",
    "QwenVLForConditionalGeneration",
    "TextConfig",
    "VisionConfig",
    "VisionInputs",
    "constrain",
    "create_sharded",
    "from_pretrained",
    "load_orbax",
    "make_mesh",
    "prepare_inputs",
    "save_orbax",
    "save_pretrained",
]
